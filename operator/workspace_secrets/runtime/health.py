"""The health probes' server (--health-probe-bind-address, as controller-runtime's): /healthz and /readyz.

It runs from the process's start, before leader election, so a standby replica answers too.

- /healthz (liveness): 200 while the process works -- standing by for the Lease, or running with its own liveness
  check passing (the operator's Secret watches connected, or disconnected for less than
  --watch-unhealthy-threshold); 500 when that check fails (a restart is the remedy); 503 while the operator is
  starting or stopping after it got the Lease (kopf's old endpoint did not answer then either).
- /readyz (readiness): 200 only while this replica leads (always, without --leader-elect), the operator has
  started and, with the webhook on, the webhook serves; else 503. A standby is live but never ready, so a
  Service sends the webhook's calls to the leader only.

The rule is `liveness()`/`readiness()` (pure); the server asks the process's `Probes` for its state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class State:
    """What the probes report on, gathered at request time."""

    electing: bool  # --leader-elect
    leading: bool  # holds the Lease (meaningless without electing)
    started: bool  # the operator (kopf's startup, the App) has started and not begun stopping
    webhook_enabled: bool = False
    webhook_serving: bool = False


def liveness(state: State, check: Callable[[], Mapping[str, Any]] | None) -> tuple[int, dict[str, Any]]:
    """(status, body) of /healthz; `check` is the operator's own liveness check (raises when failing)."""
    if state.electing and not state.leading:
        return 200, {"status": "standby"}
    if not state.started or check is None:
        return 503, {"status": "starting or stopping"}
    try:
        details = dict(check())
    except Exception as exc:  # noqa: BLE001 - the check says why it fails
        return 500, {"status": "failing", "reason": str(exc)}
    return 200, {"status": "ok", **details}


def readiness(state: State) -> tuple[int, dict[str, Any]]:
    reasons = []
    if state.electing and not state.leading:
        reasons.append("not the leader")
    if not state.started:
        reasons.append("the operator has not started")
    if state.webhook_enabled and not state.webhook_serving:
        reasons.append("the webhook does not serve")
    return (503, {"status": "not ready", "reasons": reasons}) if reasons else (200, {"status": "ready"})


@dataclass
class Probes:
    """The process's state, filled in by cli.py as it goes: the Lease, then the operator."""

    electing: bool = False
    leading: Callable[[], bool] = lambda: False
    started: Callable[[], bool] = lambda: False
    check: Callable[[], Mapping[str, Any]] | None = None
    webhook_enabled: bool = False
    webhook_serving: Callable[[], Awaitable[bool]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    async def state(self, *, webhook: bool = True) -> State:
        """`webhook` False: skip the webhook's check (its TLS handshake), which liveness does not look at."""
        serving = False
        if webhook and self.webhook_enabled and self.webhook_serving is not None:
            try:
                serving = await self.webhook_serving()
            except Exception:  # noqa: BLE001 - not serving
                serving = False
        return State(electing=self.electing, leading=self.leading(), started=self.started(),
                     webhook_enabled=self.webhook_enabled, webhook_serving=serving)


class HealthServer:
    def __init__(self, probes: Probes, host: str | None, port: int, *, liveness_paths: tuple[str, ...] = ("/healthz",)) -> None:
        """`host` "" or None: every address of every family (IPv4 and IPv6, as controller-runtime's ":PORT"), which
        also serves an IPv6-only cluster; "0.0.0.0" is IPv4's only."""
        self.probes = probes
        self.host, self.port = host, port
        self._liveness_paths = tuple(dict.fromkeys(("/healthz", *liveness_paths)))
        self._runner: web.AppRunner | None = None
        self._failing = False

    async def _healthz(self, request: web.Request) -> web.Response:
        status, body = liveness(await self.probes.state(webhook=False), self.probes.check)
        if (status == 500) != self._failing:  # said once per change, not on every probe
            self._failing = status == 500
            if self._failing:
                log.warning("liveness failing: %s", body.get("reason"))
            else:
                log.info("liveness passing again")
        return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str))

    async def _readyz(self, request: web.Request) -> web.Response:
        status, body = readiness(await self.probes.state())
        return web.json_response(body, status=status)

    async def start(self) -> None:
        app = web.Application()
        for path in self._liveness_paths:
            app.router.add_get(path, self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host or None, self.port).start()  # None: asyncio binds every family
        shown = f"[{self.host}]" if self.host and ":" in self.host else (self.host or "*")
        log.info("health probes: http://%s:%d/healthz and /readyz", shown, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await asyncio.shield(self._runner.cleanup())
            self._runner = None
