"""Pause the operator's own work (Secret watch reactions, resyncs, the work queue) while kopf's peering
has paused kopf, i.e. while another replica is the active one.

kopf pauses only its own watches and does not expose the paused state, so this gate reads the same
peering object every `interval` seconds and applies kopf's rule (domain/peering.py). The two can
disagree for up to `interval` (plus kopf's own watch latency) around a handover; both sides only ever
do idempotent compare-and-swap writes keyed by deterministic names, so a brief overlap costs at most a
repeated, harmless reconcile -- never a duplicate or lost Secret (see the README, "Reliability").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from ..domain import peering as policy
from ..kube import peering as peering_api
from ..kube.client import Kube, KubeError
from ..metrics import PEERING_ACTIVE

log = logging.getLogger(__name__)


class PeeringGate:
    def __init__(
        self,
        kube: Kube,
        *,
        name: str,
        namespaces: Sequence[str | None],
        identity: str,
        priority: int,
        active: asyncio.Event,
        clock: Callable[[], datetime],
        on_activated: Callable[[], None] = lambda: None,
        interval: float = 2.0,
    ) -> None:
        self._kube = kube
        self._name = name
        self._namespaces = list(namespaces)  # [None]: cluster-wide (ClusterKopfPeering)
        self._identity = identity
        self._priority = priority
        self._active = active
        self._clock = clock
        self._on_activated = on_activated
        self._interval = interval
        PEERING_ACTIVE.set(0)

    async def ensure_objects(self) -> None:
        """Create missing peering objects. Not fatal: without one, this replica (and kopf) stays paused,
        which is safe, and says so in the log until someone creates it (the Helm chart does)."""
        for namespace in self._namespaces:
            where = f" in {namespace!r}" if namespace else ""
            try:
                if await peering_api.ensure(self._kube, self._name, namespace):
                    log.info("Created the peering object %r%s.", self._name, where)
            except KubeError as exc:
                log.warning("Peering object %r%s is missing and could not be created (%s %s: %s); every replica "
                            "stays paused until it exists: apply crds/kopf-peering.yaml and create it, or allow the "
                            "operator to create it.", self._name, where, exc.status, exc.reason, exc.message)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except KubeError as exc:  # keep the last decision; kopf cannot see the API either
                log.warning("peering %r: could not read the peering object (%s %s)", self._name, exc.status, exc.reason)
            except Exception as exc:  # noqa: BLE001 - a connection error; retried next interval
                log.warning("peering %r: could not read the peering object (%s)", self._name, type(exc).__name__)
            await asyncio.sleep(self._interval)

    async def check(self) -> bool:
        now = self._clock()
        active = True
        for namespace in self._namespaces:
            status = await peering_api.read_status(self._kube, self._name, namespace)
            if status is None or not policy.is_active(status, self._identity, self._priority, now):
                active = False  # no object: kopf never resumes either
        self._set(active)
        return active

    def _set(self, active: bool) -> None:
        if active == self._active.is_set():
            return
        PEERING_ACTIVE.set(1 if active else 0)
        if active:
            log.info("Peering %r: this replica is active; resuming the Secret watch reactions and resyncs.", self._name)
            self._active.set()
            self._on_activated()
        else:
            log.info("Peering %r: another replica is active; pausing the Secret watch reactions and resyncs.", self._name)
            self._active.clear()
