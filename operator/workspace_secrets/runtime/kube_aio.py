"""The same `Kube`, on asyncio: one aiohttp session on the event loop, no thread pool, no watch threads.

Why: the threaded client runs urllib3 in a pool of `max_concurrency` threads plus one thread per watch, each
with its own stack and TLS state; kopf already brings aiohttp, so an asyncio transport costs no new dependency. The default; the hidden
`--api-client threads` (WSO_API_CLIENT=threads) still picks the threaded client, for comparison
(docs/developers/benchmarks.md). The verbs, the rate limiter, the metrics and the error mapping are `Kube`'s own
(this class only replaces how a request is sent), so the two behave alike for every caller. A watch read here has
backpressure: while its handler runs nothing more is read (the threaded client's watch thread parsed and queued
events without bound during a burst).

Auth and TLS come from the same `kubernetes` Configuration as the threaded client (kubeconfig or in-cluster):
the bearer token through `auth_settings()` (which calls the refresh hook: the in-cluster token file, exec
plugins), client certificate and key, CA file or data, `verify_ssl`, `assert_hostname`, `tls_server_name`, and
an HTTP(S) proxy with `no_proxy` and proxy headers. SOCKS proxies are refused (aiohttp has no SOCKS support):
use the threaded client for those. A token refresh hook (the in-cluster token file, an exec plugin) may block:
it runs in a worker thread, never on the event loop, one refresh at a time, and the headers it produced are
reused for AUTH_REUSE_SECONDS (a 401 answer drops them, so the next request refreshes at once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kubernetes
from yarl import URL

from workspace_secrets.runtime.kube import Kube, _error, load_configuration
from workspace_secrets.runtime.metrics import KUBE_REQUESTS
from workspace_secrets.runtime.ratelimit import RateLimiter

JSON = dict[str, Any]
log = logging.getLogger(__name__)

#: Seconds the auth headers from a token refresh hook are reused before the hook runs again. Short against any
#: token's life (a ServiceAccount token lives an hour, an exec plugin's minutes), long against a burst's requests.
AUTH_REUSE_SECONDS = 1.0


class AioKube(Kube):
    """`Kube` over one aiohttp session. Requests in flight are bounded by `max_concurrency` (watches are not: each
    holds its own connection for its lifetime, as each held a thread and a connection before)."""

    def __init__(
        self, configuration: kubernetes.client.Configuration, *, max_concurrency: int = 16, qps: float = 0,
        burst: int = 100,
    ) -> None:
        # Kube.__init__ is not called: it builds the urllib3 pool and the thread pool this class replaces.
        self._configuration = configuration
        self._limiter = RateLimiter(qps, burst)
        self._max_concurrency = max(1, max_concurrency)
        self._slots: asyncio.Semaphore | None = None  # made on the loop, at the first request
        self._session: aiohttp.ClientSession | None = None
        self._ssl = _ssl_context(configuration)
        self._proxy, self._proxy_headers = _proxy_settings(configuration)
        self._server_hostname = configuration.tls_server_name or None
        self._user_agent = f"OpenAPI-Generator/{kubernetes.__version__}/python"
        #: (monotonic time, headers) of the last token refresh, and the lock that makes it one at a time.
        self._auth: tuple[float, dict[str, str]] | None = None
        self._auth_lock: asyncio.Lock | None = None

    @classmethod
    def from_environment(
        cls, *, kubeconfig: str | None = None, max_concurrency: int = 16, qps: float = 0, burst: int = 100
    ) -> AioKube:
        return cls(load_configuration(kubeconfig), max_concurrency=max_concurrency, qps=qps, burst=burst)

    @property
    def configuration(self) -> kubernetes.client.Configuration:
        return self._configuration

    def close(self) -> None:
        """Close the connections without awaiting (prefer `await aclose()` on the loop): the session's close is
        scheduled on the running loop; without one the process is ending and the sockets go with it."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                asyncio.get_running_loop().create_task(session.close())
            except RuntimeError:
                pass

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- plumbing -------------------------------------------------------------------------------
    def _open(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._session.closed:
            # No connection limit in the connector: the semaphore bounds requests, and watches must never wait
            # for a request's slot (nor requests for a watch's). trust_env=False: the proxy is the
            # Configuration's (which read HTTPS_PROXY/NO_PROXY itself), exactly as for the threaded client.
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=True, skip_auto_headers=("Accept-Encoding",),
            )
            self._slots = asyncio.Semaphore(self._max_concurrency)
        assert self._slots is not None
        return self._session, self._slots

    def _configured_auth(self) -> dict[str, str]:
        """The Configuration's auth headers (calls its token refresh hook, if any: may block)."""
        return {setting["key"]: setting["value"] for setting in self._configuration.auth_settings().values()
                if setting.get("in") == "header" and setting.get("value")}

    async def _auth_headers(self) -> dict[str, str]:
        """Without a refresh hook: the configured token (no I/O). With one: the hook's fresh headers, made in a
        worker thread (reading a token file or running an exec plugin must not stall the loop), one refresh at a
        time, reused for AUTH_REUSE_SECONDS."""
        if self._configuration.refresh_api_key_hook is None:
            return self._configured_auth()
        if self._auth_lock is None:
            self._auth_lock = asyncio.Lock()
        async with self._auth_lock:  # requests waiting here reuse the refresh the first one made
            if self._auth is None or time.monotonic() - self._auth[0] >= AUTH_REUSE_SECONDS:
                self._auth = (time.monotonic(), await asyncio.to_thread(self._configured_auth))
            return self._auth[1]

    async def _headers(self, accept: str | None, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": accept or "application/json", "User-Agent": self._user_agent, **await self._auth_headers()}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _rejected(self, status: int) -> None:
        """A 401: the reused headers' token is no longer accepted; the next request refreshes it."""
        if status == 401:
            self._auth = None

    def _url(self, path: str, query: Mapping[str, str] | None) -> URL:
        url = self._configuration.host.rstrip("/") + path
        if query:
            url += "?" + urlencode(query)
        return URL(url, encoded=True)  # already quoted (paths by kube._path, the query by urlencode)

    def _request_kwargs(self, timeout: float | tuple[float, float] | None) -> dict[str, Any]:
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        kwargs: dict[str, Any] = {
            "timeout": aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read),
            "allow_redirects": False,
        }
        if self._proxy is not None:
            kwargs.update(proxy=self._proxy, proxy_headers=self._proxy_headers)
        if self._server_hostname:
            kwargs["server_hostname"] = self._server_hostname
        return kwargs

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str | None = None,
        timeout: float | tuple[float, float] | None = 30,
    ) -> Any:
        """One request; the parsed JSON answer, or KubeError/NotFound/Conflict (kube._error) for a non-2xx."""
        session, slots = self._open()
        payload = None
        if body is not None:
            content_type = content_type or "application/json"
            payload = json.dumps(body).encode()
        else:
            content_type = None
        headers = await self._headers(accept, content_type)
        async with slots:
            try:
                async with session.request(
                    method, self._url(path, query), data=payload, headers=headers,
                    **self._request_kwargs(timeout),
                ) as response:
                    raw = await response.read()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except Exception:
                KUBE_REQUESTS.labels(verb=method, code="error").inc()
                raise
        KUBE_REQUESTS.labels(verb=method, code=str(status)).inc()
        if not 200 <= status <= 299:
            self._rejected(status)
            raise _error(status, raw, retry_after)
        return json.loads(raw) if raw else None

    async def stream_async(
        self, path: str, query: Mapping[str, str], *, timeout: float, on_connected: Callable[[], None] | None = None
    ) -> AsyncIterator[JSON]:
        """Yield the JSON lines of a watch, on the loop (no thread). `on_connected` is called once the server
        accepted the watch (200), before the first event. Not paced by the rate limiter, as before."""
        session, _ = self._open()
        headers = await self._headers(None, None)
        try:
            response = await session.request(
                "GET", self._url(path, query), headers=headers, **self._request_kwargs((10, timeout)),
            )
        except Exception:
            KUBE_REQUESTS.labels(verb="WATCH", code="error").inc()
            raise
        try:
            KUBE_REQUESTS.labels(verb="WATCH", code=str(response.status)).inc()
            if not 200 <= response.status <= 299:
                self._rejected(response.status)
                raise _error(response.status, await response.read(), response.headers.get("Retry-After"))
            if on_connected is not None:
                on_connected()
            buffer = b""
            async for chunk in response.content.iter_chunked(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release()  # a watch left before its end closes its connection (aiohttp does not reuse it)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("AioKube streams on the event loop: use stream_async()")


def _ssl_context(configuration: kubernetes.client.Configuration) -> ssl.SSLContext:
    """The threaded client's TLS settings (kubernetes.client.rest / urllib3), as one SSLContext."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert, cadata=configuration.ca_cert_data)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    if getattr(configuration, "disable_strict_ssl_verification", False):
        context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def _proxy_settings(
    configuration: kubernetes.client.Configuration,
) -> tuple[URL | None, dict[str, str] | None]:
    """The Configuration's proxy (its own, or HTTPS_PROXY/NO_PROXY as it read them), unless the host bypasses it."""
    from kubernetes.client.rest import is_socks_proxy_url, should_bypass_proxies

    proxy = configuration.proxy
    if not proxy or should_bypass_proxies(configuration.host, configuration.no_proxy or ""):
        return None, None
    if is_socks_proxy_url(proxy):
        raise ValueError("a SOCKS proxy for the Kubernetes API needs --api-client=threads")
    url = URL(proxy)
    headers = dict(configuration.proxy_headers) if configuration.proxy_headers else {}
    if url.user:  # credentials in the proxy URL, as urllib3 takes them: sent to the proxy only
        headers.setdefault("Proxy-Authorization", aiohttp.encode_basic_auth(url.user, url.password or ""))
    return url.with_user(None), headers or None


def make_kube(
    api_client: str = "aio", *, kubeconfig: str | None = None, max_concurrency: int = 16, qps: float = 0,
    burst: int = 100,
) -> Kube:
    """The operator's API client: "threads" (Kube: urllib3 in a thread pool) or "aio" (AioKube)."""
    if api_client not in ("threads", "aio"):
        raise ValueError(f"unknown API client {api_client!r} (threads or aio)")
    kind = AioKube if api_client == "aio" else Kube
    if kind is AioKube:
        log.info("Kubernetes API client: asyncio (aiohttp)")
    return kind.from_environment(kubeconfig=kubeconfig, max_concurrency=max_concurrency, qps=qps, burst=burst)
