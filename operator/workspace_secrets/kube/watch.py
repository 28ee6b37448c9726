"""A label-selected watch of our own Secrets.

kopf's watches send no label selector and keep per-object memory for everything they see, so kopf only
watches our CRDs. For the Secrets we create, this watch asks the API server for just the labelled ones,
keeps no copies, and hands each change to a callback. It lists once to learn a resourceVersion, then
watches from there (with bookmarks), relisting on 410 Gone, and backs off on errors.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .client import Kube, KubeError

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[None] | None]


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
    ) -> None:
        self._kube = kube
        self._path = path
        self._selector = label_selector
        self._handler = handler
        self._timeout = timeout_seconds
        self._max_backoff = max_backoff
        self.healthy = False  # True while a watch stream is established (exposed through the probes)

    async def run(self) -> None:
        backoff = 0.5
        resource_version: str | None = None
        while True:
            try:
                if resource_version is None:
                    listing = await self._kube.list(self._path, label_selector=self._selector)
                    resource_version = listing["metadata"]["resourceVersion"]
                resource_version = await self._stream(resource_version)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except KubeError as exc:
                self.healthy = False
                if exc.status == 410:
                    resource_version = None  # expired: relist
                    continue
                log.warning("watch %s failed (%s); retrying in %.1fs", self._path, exc.reason or exc.status, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
            except Exception as exc:  # connection reset, API server restart, ...
                self.healthy = False
                log.warning("watch %s interrupted (%s); retrying in %.1fs", self._path, type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _stream(self, resource_version: str) -> str | None:
        """Stream events until the server closes the watch. Returns the resourceVersion to resume from."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()
        query = {
            "watch": "true",
            "labelSelector": self._selector,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._timeout),
        }

        def pump() -> None:
            try:
                for event in self._kube.stream(self._path, query, timeout=self._timeout + 30):
                    if stop.is_set():
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, ("event", event))
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the loop and re-raised there
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        thread = threading.Thread(target=pump, name=f"watch{self._path}", daemon=True)
        thread.start()
        self.healthy = True
        try:
            while True:
                kind, item = await queue.get()
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
            stop.set()
