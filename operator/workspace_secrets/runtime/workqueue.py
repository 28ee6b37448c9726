"""A small deduplicating work queue (the client-go workqueue idea); the operator runs one per CRD. The
WorkspaceSecret queue runs every reconcile: changes of WorkspaceSecrets (from kopf's watch), changes seen on
our own Secrets, periodic resyncs, and delayed re-checks (e.g. a workspace that does not exist yet). The
UserToken queue runs every maintenance pass: changes of UserTokens, Secret events, the connect page, and the
next pass each pass schedules for when a refresh, validation or poll is due. The number of workers bounds
how many reconciles run -- and hold objects in memory -- at a time, and lets a burst finish object by
object instead of all at once at the end. A key queued twice before a worker takes it is reconciled
once, and a key never runs twice at the same time (client-go's dirty and processing sets): a key queued
while it runs -- by a watch event, the connect page, or a timer of `add_after` firing -- is queued again
only when that run has finished. A failed key is
retried with per-key exponential backoff (never sooner than the API server's Retry-After); a key
scheduled for later twice keeps only the earlier time.

The queue can be paused (`active` cleared): workers then run nothing, keys accumulate (deduplicated),
and work resumes when the flag is set again. A worker that took a key just before the pause holds it,
still pending, until the queue resumes. Peering uses this so a standby replica does not act.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

from workspace_secrets.runtime.kube import KubeError
from workspace_secrets.runtime.metrics import WORKQUEUE_DEPTH, WORKQUEUE_RETRIES

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(
        self,
        work: Callable[[Hashable], Awaitable[None]],
        *,
        workers: int = 4,
        max_backoff: float = 60.0,
        name: str = "default",
        active: asyncio.Event | None = None,
    ):
        self._work = work
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._dirty: set[Hashable] = set()  # queued: waiting for a worker, or for its running self to finish
        self._processing: set[Hashable] = set()  # being run by a worker now
        self._failures: dict[Hashable, int] = {}
        self._delayed: dict[Hashable, asyncio.TimerHandle] = {}
        self._workers = workers
        self._max_backoff = max_backoff
        self._tasks: list[asyncio.Task] = []
        self._name = name
        if active is None:
            active = asyncio.Event()
            active.set()
        self._active = active
        WORKQUEUE_DEPTH.labels(queue=name).set_function(lambda: len(self._dirty))

    def add(self, key: Hashable) -> None:
        if key in self._dirty:
            return  # already waiting for a run
        self._dirty.add(key)
        if key not in self._processing:  # else queued when the running one finishes (_worker)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        """Queue `key` after `delay` seconds; an earlier pending schedule of the same key wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        existing = self._delayed.get(key)
        if existing is not None and not existing.cancelled() and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._delayed[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._delayed.pop(key, None)
        self.add(key)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"workqueue-{self._name}-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for handle in self._delayed.values():
            handle.cancel()
        self._delayed.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._dirty)

    async def _worker(self) -> None:
        while True:
            await self._active.wait()  # paused (a standby peer): take nothing
            key = await self._queue.get()
            # Paused while this worker waited for a key (the replica was demoted): run nothing until resumed.
            # The key stays in _dirty meanwhile, so it is neither lost nor queued a second time.
            await self._active.wait()
            self._dirty.discard(key)
            self._processing.add(key)
            try:
                await self._run(key)
            finally:
                self._processing.discard(key)
                if key in self._dirty:  # queued again while it ran: now its turn
                    self._queue.put_nowait(key)

    async def _run(self, key: Hashable) -> None:
        try:
            await self._work(key)
            self._failures.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = min(0.5 * 2 ** (failures - 1), self._max_backoff)
            if isinstance(exc, KubeError) and exc.retry_after:
                delay = max(delay, exc.retry_after)
            WORKQUEUE_RETRIES.labels(queue=self._name).inc()
            log.warning("reconcile of %s failed (%s: %s); retrying in %.1fs", key, type(exc).__name__, exc, delay)
            self.add_after(key, delay)
