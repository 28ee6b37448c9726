"""A small deduplicating work queue (the client-go workqueue idea) for reconciles that do not come from
kopf: changes seen on our own Secrets, and periodic resyncs. A key queued twice before a worker takes it
is reconciled once; a failed key is retried with per-key exponential backoff."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(self, work: Callable[[Hashable], Awaitable[None]], *, workers: int = 4, max_backoff: float = 60.0):
        self._work = work
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._pending: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._workers = workers
        self._max_backoff = max_backoff
        self._tasks: list[asyncio.Task] = []

    def add(self, key: Hashable) -> None:
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(), name=f"workqueue-{i}") for i in range(self._workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._pending)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            try:
                await self._work(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(0.5 * 2 ** (failures - 1), self._max_backoff)
                log.warning("reconcile of %s failed (%s: %s); retrying in %.1fs", key, type(exc).__name__, exc, delay)
                self.add_after(key, delay)
