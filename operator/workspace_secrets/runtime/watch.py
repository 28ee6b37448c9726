"""A label-selected watch of our own Secrets.

kopf's watches send no label selector and keep per-object memory for everything they see, so kopf only
watches our CRDs. For the Secrets we create, this watch asks the API server for just the labelled ones,
keeps no copies, and hands each change to a callback. It asks for the current resourceVersion (a list
of at most one item), then watches from there (with bookmarks), relisting on 410 Gone, and backs off on errors.

With a SecretIndex (runtime/secret_index.py), the (re)list is instead a full list of the selected objects' metadata
(no Secret data, in pages) that replaces the index's content, and the watch goes on from that list's
resourceVersion, so the index misses no change; every event updates the index before the handler runs (whatever
the handler does with it, e.g. nothing on a standby replica). `prime()` does the first list at once (before kopf
delivers the objects whose reconciling asks the index); `run()` then watches from there. A relist (after 410 Gone:
the watch was away longer than the API server keeps history) that finds the index's content changed means events
were missed: `on_missed_events` is called then, for the owner to look at what depends on them (the handler gets no
events for the gap: a list of metadata is not the objects they carried).

With `deliver_listed` (our own CRDs' objects, which the operator reads whole: WorkspaceSecrets), the (re)list is a
full paged list whose every object goes to the handler with the event type None (kopf's convention for its initial
listing), page by page (no page is kept), and the watch goes on from that list's resourceVersion: the handler sees
every object once at start and after every 410 Gone, then every change.

Health: `healthy` is True only while the API server has accepted a watch request; `unhealthy_for()`
says for how long it has not been, which the liveness probe compares with a threshold (a watch that
reconnects within seconds after an API server restart is normal; one that cannot for minutes is not).
Backoff after errors is exponential with jitter, capped, and never shorter than a Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from workspace_secrets.runtime.metrics import WATCH_HEALTHY, WATCH_RESTARTS
from workspace_secrets.runtime.kube import Kube, KubeError
from workspace_secrets.runtime.secret_index import Entry, SecretIndex

log = logging.getLogger(__name__)

#: A watch that the server ends sooner than this counts as a failure for backoff purposes.
_MIN_STREAM_SECONDS = 1.0

#: (event type -- None for an object of a (re)list with deliver_listed --, object)
Handler = Callable[[str | None, dict[str, Any]], Awaitable[None] | None]


class LabelSelectedWatch:
    def __init__(
        self,
        kube: Kube,
        path: str,
        label_selector: str,
        handler: Handler,
        *,
        timeout_seconds: int = 300,
        max_backoff: float = 30.0,
        index: SecretIndex | None = None,
        on_missed_events: Callable[[], None] | None = None,
        deliver_listed: bool = False,
    ) -> None:
        if deliver_listed and index is not None:
            raise ValueError("a watch delivers its listed objects or indexes them, not both")
        self._kube = kube
        self._deliver_listed = deliver_listed
        self._on_missed_events = on_missed_events
        self._listed_before = False
        self._path = path
        self._selector = label_selector
        self._handler = handler
        self._index = index
        self._namespace = _namespace_of(path)  # None: all namespaces
        #: The resourceVersion `prime()` listed at, for `run()` to start from.
        self._primed: str | None = None
        if index is not None:
            index.expect(self._namespace)
            self._user_handler = handler
            self._handler = self._index_then_handle
        self._timeout = timeout_seconds
        self._max_backoff = max_backoff
        self._resource = path.rsplit("/", 1)[-1]  # metric label: "secrets" (never a namespace or name)
        self._unhealthy_since: float | None = time.monotonic()
        self._healthy_gauge = WATCH_HEALTHY.labels(resource=self._resource)
        self._healthy_gauge.set(0)

    def __str__(self) -> str:
        return f"{self._path}?labelSelector={self._selector}"

    @property
    def healthy(self) -> bool:
        """True while a watch stream is established (exposed through the liveness probe)."""
        return self._unhealthy_since is None

    def unhealthy_for(self, now: float | None = None) -> float:
        """Seconds since the watch was last connected (0 while it is)."""
        if self._unhealthy_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self._unhealthy_since

    def _set_healthy(self, healthy: bool) -> None:
        if healthy:
            self._unhealthy_since = None
        elif self._unhealthy_since is None:
            self._unhealthy_since = time.monotonic()
        self._healthy_gauge.set(1 if healthy else 0)

    @property
    def index(self) -> SecretIndex | None:
        return self._index

    @property
    def indexed(self) -> bool:
        """True if this watch feeds a SecretIndex."""
        return self._index is not None

    async def prime(self) -> bool:
        """The first list, now (with an index: fills it; without: only the resourceVersion), for `run()` to watch
        from. One attempt: on an error it logs, returns False and leaves the listing to `run()` (with its backoff);
        the index then stays not `synced` until that succeeds."""
        try:
            self._primed = await self._list()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - run() retries with backoff
            status = f"{exc.status} {exc.reason}" if isinstance(exc, KubeError) else type(exc).__name__
            log.warning("listing %s failed (%s); the watch will retry", self._path, status)
            return False
        return True

    async def _list(self) -> str:
        """The resourceVersion to watch from; with an index, after replacing its content with a full list."""
        if self._deliver_listed:
            return await self._list_and_deliver()
        if self._index is None:
            # Only the resourceVersion: existing objects are the resync's business, and listing
            # them all here would hold every owned Secret (with its data) in memory at once.
            return await self._kube.resource_version(self._path, label_selector=self._selector)
        # Metadata only, in pages, each reduced to the index's entries at once (no page is kept).
        entries: list[tuple[str, str, Entry]] = []
        version = ""
        async for page, version in self._kube.list_metadata_pages(self._path, label_selector=self._selector):
            entries += SecretIndex.entries_of(page)
        changed = self._index.replace_entries(entries, version, namespace=self._namespace)
        relisted, self._listed_before = self._listed_before, True
        if relisted and changed and self._on_missed_events is not None:
            log.info("relisting %s found changes the watch missed", self._path)
            self._on_missed_events()
        return version

    async def _list_and_deliver(self) -> str:
        """A full paged list, each object handed to the handler (type None) as its page arrives."""
        version = ""
        async for page, version in self._kube.list_versioned_pages(self._path, label_selector=self._selector or None):
            for obj in page:
                try:
                    result = self._handler(None, obj)  # type: ignore[arg-type]
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("watch handler failed for a listed object")
        return version

    def _index_then_handle(self, event_type: str, obj: dict[str, Any]) -> Awaitable[None] | None:
        """With an index: every event updates it first, then goes to the handler."""
        assert self._index is not None
        try:
            self._index.apply(event_type, obj)
        except Exception:  # a malformed object must not keep the event from the handler
            log.exception("indexing a %s event failed", event_type)
        return self._user_handler(event_type, obj)

    async def run(self) -> None:
        backoff = 0.5
        resource_version, self._primed = self._primed, None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._list()
                started = time.monotonic()
                resource_version = await self._stream(resource_version)
                WATCH_RESTARTS.labels(resource=self._resource, reason="timeout").inc()
                if time.monotonic() - started < _MIN_STREAM_SECONDS:
                    # A server (or proxy) that ends every watch at once must not make us spin.
                    await asyncio.sleep(self._delay(backoff, None))
                    backoff = min(backoff * 2, self._max_backoff)
                else:
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                self._set_healthy(False)
                if exc.status == 410:
                    WATCH_RESTARTS.labels(resource=self._resource, reason="expired").inc()
                    resource_version = None  # expired: relist
                    continue
                WATCH_RESTARTS.labels(resource=self._resource, reason="error").inc()
                delay = self._delay(backoff, exc.retry_after)
                log.warning("watch %s failed (%s %s); retrying in %.1fs", self._path, exc.status, exc.reason, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self._max_backoff)
            except Exception as exc:  # connection reset, API server restart, ...
                self._set_healthy(False)
                WATCH_RESTARTS.labels(resource=self._resource, reason="error").inc()
                delay = self._delay(backoff, None)
                log.warning("watch %s interrupted (%s); retrying in %.1fs", self._path, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self._max_backoff)

    def _delay(self, backoff: float, retry_after: float | None) -> float:
        """Full-jitter-ish backoff (so replicas and watches do not reconnect in lockstep), at least the
        server's Retry-After, at most max_backoff (or the Retry-After if that is longer)."""
        delay = backoff * random.uniform(0.75, 1.25)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _stream(self, resource_version: str) -> str | None:
        """Stream events until the server closes the watch. Returns the resourceVersion to resume from."""
        query = {
            "watch": "true",
            "labelSelector": self._selector,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._timeout),
        }
        events = self._events(query)
        try:
            while True:
                kind, item = await events.__anext__()
                if kind == "connected":
                    self._set_healthy(True)
                    continue
                if kind == "end":
                    return resource_version
                if kind == "error":
                    raise item
                type_, obj = item.get("type"), item.get("object") or {}
                if type_ == "ERROR":
                    code = obj.get("code", 500)
                    raise KubeError(code, obj.get("reason", ""), obj.get("message", ""))
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                if type_ == "BOOKMARK":
                    continue
                try:
                    result = self._handler(type_, obj)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("watch handler failed for a %s event", type_)
        finally:
            await events.aclose()

    async def _events(self, query: dict[str, str]) -> AsyncIterator[tuple[str, Any]]:
        """The watch's ("connected" | "event" | "end" | "error", item)s: on the loop with an asyncio client
        (kube_aio: `stream_async`), else read by a thread of its own from the blocking `stream`."""
        stream_async = getattr(self._kube, "stream_async", None)
        if stream_async is not None:
            def connected_now() -> None:
                self._set_healthy(True)

            async for event in stream_async(self._path, query, timeout=self._timeout + 30, on_connected=connected_now):
                yield "event", event
            yield "end", None
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the operator stopped while this thread was reading
                stop.set()

        def connected() -> None:
            put(("connected", None))

        def pump() -> None:
            try:
                for event in self._kube.stream(self._path, query, timeout=self._timeout + 30, on_connected=connected):
                    if stop.is_set():
                        return
                    put(("event", event))
                put(("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the loop and re-raised there
                put(("error", exc))

        thread = threading.Thread(target=pump, name=f"watch{self._path}", daemon=True)
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()


def _namespace_of(path: str) -> str | None:
    """The namespace of a collection path (/api/v1/namespaces/<ns>/secrets), None for all namespaces."""
    parts = path.split("/")
    if "namespaces" in parts:
        at = parts.index("namespaces") + 1
        if at < len(parts) - 1:
            return unquote(parts[at])
    return None
