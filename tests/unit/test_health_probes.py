"""The health probes (--health-probe-bind-address): the rule for /healthz and /readyz (pure), and the real aiohttp
server answering it on a loopback port."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import pytest

from workspace_secrets.runtime.health import HealthServer, Probes, State, liveness, readiness


def ok() -> dict:
    return {"connected": True}


def failing() -> dict:
    raise RuntimeError("watch disconnected for longer than 60s")


@pytest.mark.parametrize(("state", "check", "expected"), [
    (State(electing=True, leading=False, started=False), None, 200),  # a standby is alive
    (State(electing=False, leading=False, started=False), None, 503),  # starting
    (State(electing=True, leading=True, started=False), ok, 503),  # got the Lease, still starting
    (State(electing=False, leading=False, started=True), ok, 200),
    (State(electing=True, leading=True, started=True), ok, 200),
    (State(electing=False, leading=False, started=True), failing, 500),  # a restart is the remedy
])
def test_liveness(state, check, expected):
    status, body = liveness(state, check)
    assert status == expected
    if status == 500:
        assert "disconnected for longer than 60s" in body["reason"]


@pytest.mark.parametrize(("state", "ready", "reason"), [
    (State(electing=True, leading=False, started=False), False, "not the leader"),
    (State(electing=True, leading=True, started=False), False, "the operator has not started"),
    (State(electing=True, leading=True, started=True), True, None),
    (State(electing=False, leading=False, started=True), True, None),  # not electing: always "leading"
    (State(electing=False, leading=False, started=True, webhook_enabled=True, webhook_serving=False), False,
     "the webhook does not serve"),
    (State(electing=False, leading=False, started=True, webhook_enabled=True, webhook_serving=True), True, None),
])
def test_readiness(state, ready, reason):
    status, body = readiness(state)
    assert (status == 200) is ready
    if reason:
        assert reason in body["reasons"]


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_server_answers_from_the_process_state(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    leading, started, healthy, serving = [False], [False], [True], [False]

    def check() -> dict:
        if not healthy[0]:
            raise RuntimeError("watch down")
        return {"connected": True}

    async def webhook_serving() -> bool:
        return serving[0]

    probes = Probes(electing=True, leading=lambda: leading[0], started=lambda: started[0], check=check,
                    webhook_enabled=True, webhook_serving=webhook_serving)

    async def scenario() -> list[tuple[str, int]]:
        server = HealthServer(probes, "127.0.0.1", port, liveness_paths=("/livez",))
        await server.start()
        seen = []

        async def probe(path: str) -> None:
            status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}")
            seen.append((path, status))

        try:
            for step in ("standby", "leading", "started", "webhook", "unhealthy"):
                if step == "leading":
                    leading[0] = True
                elif step == "started":
                    started[0] = True
                elif step == "webhook":
                    serving[0] = True
                elif step == "unhealthy":
                    healthy[0] = False
                for path in ("/healthz", "/livez", "/readyz"):
                    await probe(path)
        finally:
            await server.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen == [
        ("/healthz", 200), ("/livez", 200), ("/readyz", 503),  # standby
        ("/healthz", 503), ("/livez", 503), ("/readyz", 503),  # leading, starting
        ("/healthz", 200), ("/livez", 200), ("/readyz", 503),  # started, webhook not serving
        ("/healthz", 200), ("/livez", 200), ("/readyz", 200),
        ("/healthz", 500), ("/livez", 500), ("/readyz", 200),  # liveness failing: restart, readiness unchanged
    ]
    assert sum("liveness failing: watch down" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_only_readiness_checks_the_webhook():
    """The webhook's check (a TLS handshake) is readiness's only: /healthz never makes it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls = []

    async def webhook_serving() -> bool:
        calls.append(1)
        return True

    probes = Probes(electing=False, started=lambda: True, check=ok, webhook_enabled=True, webhook_serving=webhook_serving)

    async def scenario() -> list[tuple[str, int, int]]:
        server = HealthServer(probes, "127.0.0.1", port, liveness_paths=("/livez",))
        await server.start()
        seen = []
        try:
            for path in ("/healthz", "/livez", "/readyz"):
                status, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}{path}")
                seen.append((path, status, len(calls)))
        finally:
            await server.stop()
        return seen

    assert asyncio.run(scenario()) == [("/healthz", 200, 0), ("/livez", 200, 0), ("/readyz", 200, 1)]


def _free_port_on_both_families() -> int:
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET6) as s6:
                s6.bind(("::1", port))
        except OSError:
            continue
        return port
    pytest.skip("no port free on both 127.0.0.1 and ::1")


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_every_address_serves_ipv4_and_ipv6():
    """":PORT" (host "", the default ":8080") listens on every address family: an IPv6-only cluster's kubelet probes
    the pod's IPv6 address. "0.0.0.0" would be IPv4's only."""
    port = _free_port_on_both_families()
    probes = Probes(electing=True)  # a standby: /healthz 200

    async def scenario() -> list[int]:
        server = HealthServer(probes, "", port)
        await server.start()
        try:
            return [(await asyncio.to_thread(_get, f"http://{host}:{port}/healthz"))[0] for host in ("127.0.0.1", "[::1]")]
        finally:
            await server.stop()

    assert asyncio.run(scenario()) == [200, 200]


def test_the_metrics_server_on_every_address_serves_ipv4_and_ipv6():
    # --metrics-bind-address :PORT listens on every address family, like the health server (IPv6-only clusters).
    import socket
    import urllib.request

    from prometheus_client import CollectorRegistry

    from workspace_secrets.runtime import metrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(port, "", registry=CollectorRegistry())
    for host in ("127.0.0.1", "[::1]"):
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            assert response.status == 200, host
