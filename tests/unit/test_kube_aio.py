"""The asyncio API client (runtime/kube_aio.py) against a small local aiohttp server: the verbs and their error
mapping (404, 409, 410, 429 with Retry-After), auth from the kubernetes Configuration (bearer token and its refresh
hook, client certificate over TLS), metadata-only lists, bounded concurrency, and a watch streamed on the loop."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from prometheus_client import REGISTRY

from workspace_secrets.runtime import kube_aio, pki
from workspace_secrets.runtime.kube import Conflict, Kube, KubeError, NotFound
from workspace_secrets.runtime.kube_aio import AioKube, _proxy_settings, make_kube
from workspace_secrets.runtime.watch import LabelSelectedWatch

SECRETS = "/api/v1/namespaces/team/secrets"


@pytest.fixture(autouse=True)
def _no_proxy_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def configuration(url: str, token: str | None = "t0") -> kubernetes.client.Configuration:
    config = kubernetes.client.Configuration(host=url)
    if token is not None:
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
    return config


Scenario = Callable[[AioKube, list[web.Request]], Awaitable[None]]


def serve(routes: Callable[[web.Application], None], scenario: Scenario, *, token: str | None = "t0",
          ssl_context: ssl.SSLContext | None = None, configure: Callable[[kubernetes.client.Configuration], None] | None = None,
          **kube_options: Any) -> list[web.Request]:
    """Run `scenario(kube, requests)` against a local server with `routes`; returns the requests it saw."""
    seen: list[web.Request] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    async def main() -> None:
        app = web.Application(middlewares=[record])
        routes(app)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config = configuration(f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}", token)
        if configure is not None:
            configure(config)
        kube = AioKube(config, **kube_options)
        try:
            await scenario(kube, seen)
        finally:
            await kube.aclose()
            await runner.cleanup()

    asyncio.run(main())
    return seen


def status(code: int, reason: str, message: str = "", headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                              "message": message, "code": code}, status=code, headers=headers)


def requests_total(verb: str, code: str) -> float:
    return REGISTRY.get_sample_value("wso_kube_requests_total", {"verb": verb, "code": code}) or 0.0


# --- verbs, auth, errors -------------------------------------------------------------------------

def test_verbs_send_json_with_the_configured_bearer_token_and_parse_the_answer() -> None:
    def routes(app: web.Application) -> None:
        async def get(request: web.Request) -> web.Response:
            return web.json_response({"metadata": {"name": request.match_info["name"], "resourceVersion": "7"}})

        async def write(request: web.Request) -> web.Response:
            return web.json_response({"echo": await request.json(), "type": request.content_type})

        app.router.add_get(SECRETS + "/{name}", get)
        app.router.add_post(SECRETS, write)
        app.router.add_put(SECRETS + "/{name}", write)
        app.router.add_patch(SECRETS + "/{name}", write)

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        before = requests_total("GET", "200")
        assert (await kube.get(SECRETS + "/a"))["metadata"]["name"] == "a"
        assert requests_total("GET", "200") == before + 1
        assert (await kube.get(SECRETS + "/b", resource_version="0"))["metadata"]["resourceVersion"] == "7"
        assert seen[-1].query["resourceVersion"] == "0"
        assert (await kube.create(SECRETS, {"metadata": {"name": "c"}}))["type"] == "application/json"
        assert (await kube.replace(SECRETS + "/c", {"x": 1}))["echo"] == {"x": 1}
        assert (await kube.merge_patch(SECRETS + "/c", {"y": 2}))["type"] == "application/merge-patch+json"
        assert (await kube.json_patch(SECRETS + "/c", [{"op": "test", "path": "/a", "value": 1}]))["type"] == \
            "application/json-patch+json"
        for request in seen:
            assert request.headers["Authorization"] == "Bearer t0"
            assert request.headers["Accept"] == "application/json"
            assert "kopf" not in request.headers["User-Agent"].lower()
        assert [r.method for r in seen] == ["GET", "GET", "POST", "PUT", "PATCH", "PATCH"]

    serve(routes, scenario)


def test_the_refresh_hook_runs_again_once_its_headers_are_older_than_the_reuse_time_and_its_token_is_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_aio, "AUTH_REUSE_SECONDS", 0.0)  # every request finds the last refresh too old
    tokens = iter(f"t{i}" for i in range(1, 100))

    def refresh(config: kubernetes.client.Configuration) -> None:
        config.api_key["authorization"] = next(tokens)

    def routes(app: web.Application) -> None:
        async def get(request: web.Request) -> web.Response:
            return web.json_response({})

        app.router.add_get(SECRETS + "/{name}", get)

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        await kube.get(SECRETS + "/a")
        await kube.get(SECRETS + "/a")
        assert [r.headers["Authorization"] for r in seen] == ["Bearer t1", "Bearer t2"]

    serve(routes, scenario, configure=lambda config: setattr(config, "refresh_api_key_hook", refresh))


def test_the_refresh_hook_runs_off_the_loop_once_for_concurrent_requests_and_again_after_a_401() -> None:
    """An exec plugin or a token file read must not stall the event loop (every watch and reconcile shares it)."""
    calls: list[tuple[int, bool]] = []  # (thread, whether that thread runs an event loop)
    tokens = iter(f"t{i}" for i in range(1, 100))

    def refresh(config: kubernetes.client.Configuration) -> None:
        try:
            asyncio.get_running_loop()
            on_a_loop = True
        except RuntimeError:
            on_a_loop = False
        calls.append((threading.get_ident(), on_a_loop))
        config.api_key["authorization"] = next(tokens)

    def routes(app: web.Application) -> None:
        async def get(request: web.Request) -> web.Response:
            if request.match_info["name"] == "denied":
                return status(401, "Unauthorized")
            return web.json_response({})

        app.router.add_get(SECRETS + "/{name}", get)

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        await asyncio.gather(*(kube.get(SECRETS + "/a") for _ in range(5)))
        assert len(calls) == 1, "five requests at once share one refresh"
        with pytest.raises(KubeError) as denied:
            await kube.get(SECRETS + "/denied")
        assert denied.value.status == 401
        await kube.get(SECRETS + "/a")  # within the reuse time, but the token was refused: refreshed
        assert len(calls) == 2
        assert [r.headers["Authorization"] for r in seen] == ["Bearer t1"] * 6 + ["Bearer t2"]
        assert not any(on_a_loop for _, on_a_loop in calls) and threading.get_ident() not in {t for t, _ in calls}

    serve(routes, scenario, configure=lambda config: setattr(config, "refresh_api_key_hook", refresh))


def test_no_token_no_authorization_header() -> None:
    def routes(app: web.Application) -> None:
        async def get(request: web.Request) -> web.Response:
            return web.json_response({})

        app.router.add_get(SECRETS + "/{name}", get)

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        await kube.get(SECRETS + "/a")
        assert "Authorization" not in seen[0].headers

    serve(routes, scenario, token=None)


def test_error_mapping_404_409_410_429_and_retry_after_holds_every_request() -> None:
    def routes(app: web.Application) -> None:
        async def get(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            if name == "gone":
                return status(410, "Expired", "too old resource version")
            if name == "busy":
                return status(429, "TooManyRequests", "slow down", headers={"Retry-After": "2"})
            if name == "text":
                return web.Response(status=500, text="not json")
            return status(404, "NotFound", f'secrets "{name}" not found')

        async def post(request: web.Request) -> web.Response:
            return status(409, "AlreadyExists", "already exists")

        async def delete(request: web.Request) -> web.Response:
            if request.match_info["name"] == "gone":
                return status(404, "NotFound", "not found")
            if request.match_info["name"] == "stale":
                return status(409, "Conflict", "precondition failed")
            return web.json_response({"body": await request.json()})

        app.router.add_get(SECRETS + "/{name}", get)
        app.router.add_post(SECRETS, post)
        app.router.add_delete(SECRETS + "/{name}", delete)

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        assert await kube.get(SECRETS + "/missing") is None
        assert requests_total("GET", "404") >= 1
        with pytest.raises(Conflict) as conflict:
            await kube.create(SECRETS, {"metadata": {"name": "x"}})
        assert (conflict.value.status, conflict.value.reason) == (409, "AlreadyExists")
        with pytest.raises(KubeError) as gone:
            await kube.list(SECRETS + "/gone")
        assert gone.value.status == 410 and not isinstance(gone.value, NotFound)
        with pytest.raises(KubeError) as raw:
            await kube.list(SECRETS + "/text")
        assert (raw.value.status, raw.value.message) == (500, "not json")
        assert await kube.delete(SECRETS + "/gone") is False
        with pytest.raises(Conflict):
            await kube.delete(SECRETS + "/stale", uid="u1", resource_version="5")
        assert await kube.delete(SECRETS + "/x", uid="u1") is True
        assert json.loads(await seen[-1].read())["preconditions"] == {"uid": "u1"}
        with pytest.raises(KubeError) as busy:
            await kube.list(SECRETS + "/busy")
        assert busy.value.status == 429 and busy.value.retry_after == 2.0
        # The whole client waits for the Retry-After (the shared limiter), not only the caller that was told.
        started = time.monotonic()
        assert await kube.get(SECRETS + "/missing") is None
        assert time.monotonic() - started >= 1.5

    serve(routes, scenario)


def test_a_connection_failure_counts_as_an_error_and_backs_the_client_off() -> None:
    async def scenario() -> None:
        kube = AioKube(configuration("http://127.0.0.1:9"))  # discard port: refused
        before = requests_total("GET", "error")
        try:
            with pytest.raises(OSError):
                await kube.get(SECRETS + "/a")
        finally:
            await kube.aclose()
        assert requests_total("GET", "error") == before + 1
        assert kube._limiter.delay() > 0  # the shared failure hold

    asyncio.run(scenario())


def test_requests_in_flight_are_bounded_by_max_concurrency() -> None:
    state = {"now": 0, "max": 0}

    def routes(app: web.Application) -> None:
        async def get(request: web.Request) -> web.Response:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            await asyncio.sleep(0.05)
            state["now"] -= 1
            return web.json_response({})

        app.router.add_get(SECRETS + "/{name}", get)

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        await asyncio.gather(*(kube.get(f"{SECRETS}/s{i}") for i in range(12)))
        assert len(seen) == 12 and state["max"] == 3

    serve(routes, scenario, max_concurrency=3)


# --- lists --------------------------------------------------------------------------------------------

def test_list_metadata_pages_asks_for_metadata_only_and_follows_continue_tokens() -> None:
    def routes(app: web.Application) -> None:
        async def list_(request: web.Request) -> web.Response:
            assert "as=PartialObjectMetadataList" in request.headers["Accept"]
            if request.query.get("continue") == "next":
                return web.json_response({"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "40"},
                                          "items": [{"metadata": {"name": "c"}}]})
            return web.json_response({"kind": "PartialObjectMetadataList",
                                      "metadata": {"resourceVersion": "40", "continue": "next"},
                                      "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]})

        app.router.add_get(SECRETS, list_)

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        pages = [page async for page in kube.list_metadata_pages(SECRETS, label_selector="a=b", page_size=2)]
        assert [([i["metadata"]["name"] for i in items], rv) for items, rv in pages] == [(["a", "b"], "40"), (["c"], "40")]
        assert seen[0].query["limit"] == "2" and seen[0].query["labelSelector"] == "a=b"
        assert seen[1].query["continue"] == "next"

    serve(routes, scenario)


def test_list_pages_and_resource_version() -> None:
    def routes(app: web.Application) -> None:
        async def list_(request: web.Request) -> web.Response:
            return web.json_response({"metadata": {"resourceVersion": "9"}, "items": [{"metadata": {"name": "a"}}]})

        app.router.add_get(SECRETS, list_)

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        assert [len(page) async for page in kube.list_pages(SECRETS)] == [1]
        assert await kube.resource_version(SECRETS, label_selector="x in (a,b)") == "9"
        assert seen[-1].query["limit"] == "1" and seen[-1].query["labelSelector"] == "x in (a,b)"
        assert (await kube.list(SECRETS, not_older_than="5"))["items"]
        assert seen[-1].query["resourceVersionMatch"] == "NotOlderThan"

    serve(routes, scenario)


# --- watches ------------------------------------------------------------------------------------------

def _watch_routes(events: list[bytes], *, first_status: int | None = None) -> Callable[[web.Application], None]:
    """A watch endpoint that answers `first_status` (a Status) to the first watch if given, then streams `events`
    (raw bytes, so a JSON line may be split across chunks) and ends; lists answer resourceVersion 1."""
    calls = {"watch": 0}

    def routes(app: web.Application) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            if request.query.get("watch") != "true":
                return web.json_response({"metadata": {"resourceVersion": "1"}, "items": []})
            calls["watch"] += 1
            if first_status and calls["watch"] == 1:
                return status(first_status, "Expired" if first_status == 410 else "Error", "watch refused")
            response = web.StreamResponse()
            response.content_type = "application/json"
            await response.prepare(request)
            for chunk in events:
                await response.write(chunk)
                await asyncio.sleep(0.01)
            if calls["watch"] > 1 or not first_status:
                await asyncio.sleep(60)  # then hold the watch open, as the API server does
            return response

        app.router.add_get(SECRETS, handler)

    return routes


def event(type_: str, name: str, rv: str) -> bytes:
    return json.dumps({"type": type_, "object": {"metadata": {"name": name, "resourceVersion": rv}}}).encode() + b"\n"


def test_stream_async_yields_json_lines_split_across_chunks_and_calls_on_connected_first() -> None:
    added = event("ADDED", "a", "2")
    chunks = [added[:10], added[10:] + event("BOOKMARK", "", "3")[:5], event("BOOKMARK", "", "3")[5:], b"\n"]

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        order: list[str] = []
        stream = kube.stream_async(SECRETS, {"watch": "true"}, timeout=5, on_connected=lambda: order.append("connected"))
        async for item in stream:
            order.append(item["type"])
            if len(order) == 3:
                break
        await stream.aclose()
        assert order == ["connected", "ADDED", "BOOKMARK"]
        assert seen[0].headers["Authorization"] == "Bearer t0"

    serve(_watch_routes(chunks), scenario)


def test_a_refused_watch_raises_the_mapped_error() -> None:
    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        before = requests_total("WATCH", "410")
        with pytest.raises(KubeError) as gone:
            async for _ in kube.stream_async(SECRETS, {"watch": "true"}, timeout=5):
                pass
        assert gone.value.status == 410
        assert requests_total("WATCH", "410") == before + 1

    serve(_watch_routes([], first_status=410), scenario)


def test_the_label_selected_watch_runs_on_the_loop_without_a_thread_and_relists_after_410() -> None:
    import threading

    received: list[tuple[str, str]] = []

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        watch = LabelSelectedWatch(kube, SECRETS, "a=b", lambda type_, obj: received.append((type_, obj["metadata"]["name"])))
        threads = {t.name for t in threading.enumerate()}
        task = asyncio.create_task(watch.run())
        deadline = time.monotonic() + 10
        while len(received) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert watch.healthy
        assert not {t.name for t in threading.enumerate()} - threads  # no thread was started for the watch
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    events = [event("ADDED", "a", "2"), event("BOOKMARK", "", "3"), event("MODIFIED", "a", "4")]
    seen = serve(_watch_routes(events, first_status=410), scenario)
    assert received == [("ADDED", "a"), ("MODIFIED", "a")]
    watches = [r for r in seen if r.query.get("watch") == "true"]
    assert len(watches) == 2 and all(r.query["labelSelector"] == "a=b" for r in watches)


# --- TLS, proxy, factory ------------------------------------------------------------------------------

def _pki(tmp: Path) -> tuple[ssl.SSLContext, dict[str, str]]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate; the server requires the client's."""
    now = datetime.now(timezone.utc)
    window = {"not_before": now - timedelta(minutes=1), "not_after": now + timedelta(hours=1)}
    ca_key = pki.new_key()
    ca = pki.self_signed_ca(ca_key, "test-ca", **window)
    files = {}
    for role, options in (("server", {"hosts": ["127.0.0.1"], "server": True}), ("client", {"client": True})):
        key = pki.new_key()
        cert = pki.sign_leaf(ca, ca_key, key, role, **window, **options)
        (tmp / f"{role}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp / f"{role}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        files[role] = str(tmp / f"{role}.crt"), str(tmp / f"{role}.key")
    (tmp / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp / "ca.crt"))
    server.load_cert_chain(*files["server"])
    server.verify_mode = ssl.CERT_REQUIRED
    return server, {"ca": str(tmp / "ca.crt"), "cert": files["client"][0], "key": files["client"][1]}


def test_tls_with_the_configured_ca_and_client_certificate(tmp_path: Path) -> None:
    server, files = _pki(tmp_path)

    def routes(app: web.Application) -> None:
        async def get(request: web.Request) -> web.Response:
            peer = request.transport.get_extra_info("peercert")  # type: ignore[union-attr]
            return web.json_response({"client": dict(x[0] for x in peer["subject"])["commonName"]})

        app.router.add_get(SECRETS + "/{name}", get)

    def configure(config: kubernetes.client.Configuration) -> None:
        config.ssl_ca_cert, config.cert_file, config.key_file = files["ca"], files["cert"], files["key"]

    async def scenario(kube: AioKube, seen: list[web.Request]) -> None:
        assert await kube.get(SECRETS + "/a") == {"client": "client"}

    serve(routes, scenario, ssl_context=server, configure=configure)

    def untrusted(config: kubernetes.client.Configuration) -> None:
        config.cert_file, config.key_file = files["cert"], files["key"]  # no CA: the system store does not know it

    async def refused(kube: AioKube, seen: list[web.Request]) -> None:
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await kube.get(SECRETS + "/a")

    serve(routes, refused, ssl_context=server, configure=untrusted)


def test_proxy_settings_come_from_the_configuration() -> None:
    config = kubernetes.client.Configuration(host="https://10.0.0.1:6443")
    config.proxy = "http://user:secret@proxy.example:3128"
    config.proxy_headers = {"X-Proxy": "1"}
    url, headers = _proxy_settings(config)
    assert str(url) == "http://proxy.example:3128"  # the credentials go in the header, to the proxy only
    assert headers == {"X-Proxy": "1", "Proxy-Authorization": "Basic dXNlcjpzZWNyZXQ="}
    config.no_proxy = "10.0.0.0/8"
    assert _proxy_settings(config) == (None, None)
    config.no_proxy = None
    config.proxy = "socks5://proxy.example:1080"
    with pytest.raises(ValueError, match="threads"):
        _proxy_settings(config)


def test_make_kube_picks_the_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("workspace_secrets.runtime.kube_aio.load_configuration", lambda kubeconfig=None: configuration("http://x"))
    monkeypatch.setattr("workspace_secrets.runtime.kube.load_configuration", lambda kubeconfig=None: configuration("http://x"))
    aio = make_kube("aio", max_concurrency=4)
    assert type(aio) is AioKube and aio.configuration.host == "http://x"
    threads = make_kube("threads")
    assert type(threads) is Kube
    threads.close()
    aio.close()
    with pytest.raises(ValueError):
        make_kube("gevent")


def test_closing_on_the_loop_closes_the_session_without_a_warning(recwarn):
    """`await aclose()` is what the App and the leader election use; a sync close() on the loop schedules the
    session's close instead of leaving a coroutine un-awaited (a RuntimeWarning on stderr broke JSON logs)."""
    import asyncio as _asyncio
    import gc

    import kubernetes

    from workspace_secrets.runtime.kube_aio import AioKube

    async def scenario() -> None:
        for closing in ("aclose", "close"):
            kube = AioKube(kubernetes.client.Configuration(host="https://127.0.0.1:1"))
            session, _ = kube._open()
            if closing == "aclose":
                await kube.aclose()
            else:
                kube.close()
                await _asyncio.sleep(0.05)
            assert session.closed

    _asyncio.run(scenario())
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in recwarn]
