"""An asyncio facade over the `kubernetes` client's transport, speaking plain JSON dicts.

Why not the generated typed APIs: they deserialize every response into model objects, which costs CPU and
memory per call, and this operator only ever needs a handful of fields. The design card's `kubernetes`
package still does what it is good at -- kubeconfig/in-cluster loading, TLS and auth (including exec
plugins and token refresh) -- and we reuse its connection pool. Blocking calls run in a bounded thread
pool of our own so that they never share kopf's pool for sync handlers.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

import kubernetes
import urllib3

from workspace_secrets.runtime.metrics import KUBE_REQUESTS
from workspace_secrets.runtime.ratelimit import RateLimiter

JSON = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
#: Lists of metadata only (kubectl get's and client-go's metadata informers' Accept), JSON as a fallback.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"


class KubeError(Exception):
    """An API error. The message is the API server's own (it never contains Secret data)."""

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        #: Seconds the server asked us to wait (429/503 Retry-After); callers back off at least this long.
        self.retry_after = retry_after


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """409: AlreadyExists on create, or a stale resourceVersion on update."""


class Kube:
    """Async JSON access to the API server. One instance per operator process."""

    def __init__(
        self, api_client: kubernetes.client.ApiClient, *, max_concurrency: int = 16, qps: float = 0, burst: int = 100
    ) -> None:
        self._api = api_client
        # urllib3 keeps one pool per host; size it for our concurrency so connections are reused.
        api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = max_concurrency + 4
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="kube")
        self._limiter = RateLimiter(qps, burst)

    @classmethod
    def from_environment(
        cls, *, kubeconfig: str | None = None, max_concurrency: int = 16, qps: float = 0, burst: int = 100
    ) -> Kube:
        """In-cluster config when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        configuration = load_configuration(kubeconfig)
        configuration.connection_pool_maxsize = max_concurrency
        return cls(kubernetes.client.ApiClient(configuration), max_concurrency=max_concurrency, qps=qps, burst=burst)

    @property
    def configuration(self) -> kubernetes.client.Configuration:
        return self._api.configuration

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    async def aclose(self) -> None:
        """Close on the event loop (what callers on the loop use: the asyncio client must await its session)."""
        self.close()

    # --- plumbing -------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | tuple[float, float] | None = 30,
        stream: bool = False,
        accept: str | None = None,
    ) -> Any:
        """One HTTP request through the client's urllib3 pool (its TLS and client-certificate setup).

        Only the pool and the Configuration's auth settings are used -- interfaces that are stable across
        `kubernetes` releases, unlike the generated ApiClient's call signature."""
        configuration = self._api.configuration
        headers = {"Accept": accept or "application/json", "User-Agent": self._api.user_agent}
        for setting in configuration.auth_settings().values():  # calls the token refresh hook if any
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        payload = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            payload = json.dumps(body).encode()
        url = configuration.host.rstrip("/") + path
        if query:
            url += "?" + urlencode(query)
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        return self._api.rest_client.pool_manager.request(
            method, url, body=payload, headers=headers, preload_content=not stream,
            timeout=urllib3.Timeout(connect=connect, read=read), retries=False,
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._request(method, path, **kwargs)
        except Exception:
            KUBE_REQUESTS.labels(verb=method, code="error").inc()
            raise
        KUBE_REQUESTS.labels(verb=method, code=str(response.status)).inc()
        raw = response.data
        if not 200 <= response.status <= 299:
            raise _error(response.status, raw, response.headers.get("Retry-After"))
        return json.loads(raw) if raw else None

    async def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request, its parsed answer (or KubeError): in the thread pool here, on the loop in kube_aio."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self._call(method, path, **kwargs))

    async def _run(self, method: str, path: str, **kwargs: Any) -> Any:
        await self._limiter.acquire()
        try:
            result = await self._send(method, path, **kwargs)
        except KubeError as exc:
            if exc.status == 429 or exc.status >= 500:
                self._limiter.failed()
                if exc.retry_after:
                    self._limiter.hold(exc.retry_after)
            else:
                self._limiter.succeeded()  # the server answered sanely (404, 409, 422, ...)
            raise
        except Exception:
            self._limiter.failed()  # no answer: refused, reset, timed out
            raise
        self._limiter.succeeded()
        return result

    # --- verbs ----------------------------------------------------------------------------------
    async def get(self, path: str, *, resource_version: str | None = None) -> JSON | None:
        """GET; None for 404. Without `resource_version` a quorum read (etcd). With one, the API server answers from
        its watch cache: "0" whatever the cache holds (possibly a moment stale), any other version a state not
        older than that one (the cache waits up to ~3 s to catch up, else 504)."""
        try:
            if resource_version is not None:
                return await self._run("GET", path, query={"resourceVersion": resource_version})
            return await self._run("GET", path)
        except NotFound:
            return None

    async def list(self, path: str, *, label_selector: str | None = None, from_cache: bool = False,
                   not_older_than: str | None = None) -> JSON:
        """LIST; `from_cache` lets the API server answer from its watch cache (resourceVersion=0): cheaper,
        possibly a moment stale -- fine where a watch will bring us back for any later change. `not_older_than`
        (a resourceVersion, e.g. of a watch event): from the watch cache too, but at least that new."""
        query = {"labelSelector": label_selector} if label_selector else {}
        if from_cache:
            query["resourceVersion"] = "0"
        if not_older_than:
            query.update(resourceVersion=not_older_than, resourceVersionMatch="NotOlderThan")
        return await self._run("GET", path, query=query or None)

    async def _pages(self, path: str, label_selector: str | None, page_size: int, accept: str | None = None) -> AsyncIterator[JSON]:
        """The raw pages of one paged list (one snapshot: every page carries its resourceVersion)."""
        token: str | None = None
        while True:
            query = {"limit": str(page_size), **({"labelSelector": label_selector} if label_selector else {}),
                     **({"continue": token} if token else {})}
            page = await self._run("GET", path, query=query, accept=accept)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    async def list_pages(self, path: str, *, label_selector: str | None = None, page_size: int = 500) -> AsyncIterator[list[JSON]]:
        """A list in pages of `page_size` items: memory stays bounded by the page, not the collection
        (10,000 Secrets with their data would be tens of megabytes of JSON in one response)."""
        async for page in self._pages(path, label_selector, page_size):
            yield page.get("items") or []

    async def list_versioned_pages(self, path: str, *, label_selector: str | None = None,
                                   page_size: int = 500) -> AsyncIterator[tuple[list[JSON], str]]:
        """A paged list of whole objects, each page with the list's resourceVersion (the same on every page: that of
        its snapshot, from which a watch continues without a gap). A consistent read: what the API server holds now."""
        async for page in self._pages(path, label_selector, page_size):
            yield page.get("items") or [], (page.get("metadata") or {}).get("resourceVersion", "")

    async def list_metadata_pages(self, path: str, *, label_selector: str | None = None,
                                  page_size: int = 500) -> AsyncIterator[tuple[list[JSON], str]]:
        """A paged list of the objects' metadata only (PartialObjectMetadataList): no Secret data crosses the wire
        or sits in memory. Yields (items, the list's resourceVersion) per page -- every page of one list carries the
        same resourceVersion, that of its snapshot, from which a watch continues without a gap. Each item holds the
        object's `metadata` and nothing of its own fields. A consistent read (no resourceVersion): what the API server holds now."""
        async for page in self._pages(path, label_selector, page_size, accept=METADATA_LIST):
            items = page.get("items") or []
            if page.get("kind") != "PartialObjectMetadataList":
                # A server that ignored the metadata-only Accept (an aggregated API may): keep nothing but metadata.
                items = [{"metadata": item.get("metadata") or {}} for item in items]
            yield items, (page.get("metadata") or {}).get("resourceVersion", "")

    async def resource_version(self, path: str, *, label_selector: str | None = None) -> str:
        """The collection's current resourceVersion, to start a watch from, without fetching its items
        (a list of at most one item)."""
        query = {"limit": "1", **({"labelSelector": label_selector} if label_selector else {})}
        return (await self._run("GET", path, query=query))["metadata"]["resourceVersion"]

    async def create(self, path: str, body: JSON) -> JSON:
        return await self._run("POST", path, body=body)

    async def replace(self, path: str, body: JSON) -> JSON:
        """PUT; `body.metadata.resourceVersion` makes it a compare-and-swap (409 Conflict if stale)."""
        return await self._run("PUT", path, body=body)

    async def merge_patch(self, path: str, patch: JSON) -> JSON:
        return await self._run("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def json_patch(self, path: str, operations: list[JSON]) -> JSON:
        """RFC 6902 PATCH. A failed `test` operation is refused as a whole (422): guards a change against a
        concurrent one without a resourceVersion."""
        return await self._run("PATCH", path, body=operations, content_type=JSON_PATCH)

    async def delete(self, path: str, *, uid: str | None = None, resource_version: str | None = None) -> bool:
        """Delete; with `uid`, only that incarnation of the object (with `resource_version`, only as it was then:
        409 if it changed). False if it was already gone."""
        preconditions = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": preconditions} if preconditions else None
        try:
            await self._run("DELETE", path, body=body)
            return True
        except NotFound:
            return False

    def stream(
        self, path: str, query: Mapping[str, str], *, timeout: float, on_connected: Callable[[], None] | None = None
    ) -> Iterator[JSON]:
        """Blocking: yield the JSON lines of a watch. Run it in a thread (see kube.watch).
        `on_connected` is called once the server accepted the watch (200), before the first event."""
        try:
            response = self._request("GET", path, query=query, timeout=(10, timeout), stream=True)
        except Exception:
            KUBE_REQUESTS.labels(verb="WATCH", code="error").inc()
            raise
        KUBE_REQUESTS.labels(verb="WATCH", code=str(response.status)).inc()
        try:
            if not 200 <= response.status <= 299:
                raise _error(response.status, response.read(), response.headers.get("Retry-After"))
            if on_connected is not None:
                on_connected()
            buffer = b""
            for chunk in response.stream(amt=65536, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            response.release_conn()


def load_configuration(kubeconfig: str | None = None) -> kubernetes.client.Configuration:
    """In-cluster config when running in a pod (and no kubeconfig is given), else the kubeconfig file."""
    configuration = kubernetes.client.Configuration()
    try:
        if kubeconfig:
            raise kubernetes.config.ConfigException("explicit kubeconfig")
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(
            config_file=kubeconfig or os.environ.get("KUBECONFIG") or None,
            client_configuration=configuration,
            persist_config=False,
        )
    return configuration


def _error(status: int, raw: bytes, retry_after: str | None = None) -> KubeError:
    try:
        payload = json.loads(raw)
        reason, message = payload.get("reason", ""), payload.get("message", "")
    except ValueError:
        reason, message = "", raw[:200].decode("utf-8", "replace")
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409:
        return Conflict(status, reason, message)
    return KubeError(status, reason, message, retry_after=_seconds(retry_after))


def _seconds(header: str | None) -> float | None:
    """Retry-After in seconds (the API server sends integers; an HTTP date is not used by it)."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None


# --- paths --------------------------------------------------------------------------------------
def core_path(namespace: str, plural: str, name: str | None = None, *, subresource: str | None = None) -> str:
    return _path("/api/v1", namespace, plural, name, subresource)


def group_path(
    api_version: str, namespace: str, plural: str, name: str | None = None, *, subresource: str | None = None
) -> str:
    return _path(f"/apis/{api_version}", namespace, plural, name, subresource)


def _path(prefix: str, namespace: str, plural: str, name: str | None, subresource: str | None) -> str:
    path = f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
    if name is not None:
        path += "/" + quote(name, safe="")
    if subresource:
        path += "/" + subresource
    return path
