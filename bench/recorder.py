"""Watch-driven timestamps: when each object was first seen in a given state.

The harness never polls objects one by one: one watch per collection records, for each object name, the
monotonic time at which an event first showed it Ready, added or deleted. Times are taken when the event
arrives in this process, so they include the API server's watch delivery (a few milliseconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .kube import BenchKube

Predicate = Callable[[str, Mapping[str, Any]], str | None]  # (event type, object) -> mark name or None


class Recorder:
    def __init__(self, kube: BenchKube, path: str, *, label_selector: str | None = None,
                 classify: Predicate, key: Callable[[Mapping[str, Any]], str] | None = None) -> None:
        self._kube = kube
        self._path = path
        self._selector = label_selector
        self._classify = classify
        self._key = key or (lambda obj: obj["metadata"]["name"])
        self.marks: dict[str, dict[str, float]] = {}  # mark -> {name: first time}
        self.events = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recorder{path}", daemon=True)
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> Recorder:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError(f"watch on {self._path} did not start")
        return self

    def stop(self) -> None:
        self._stop.set()  # the stream thread notices at its next event or server timeout (daemon)

    def _run(self) -> None:
        try:
            query = {"limit": "1", **({"labelSelector": self._selector} if self._selector else {})}
            version = self._kube.call("GET", self._path, query=query)["metadata"]["resourceVersion"]
            self._ready.set()
            while not self._stop.is_set():
                watch_query = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true",
                               "timeoutSeconds": "60", **({"labelSelector": self._selector} if self._selector else {})}
                for event in self._kube.watch(self._path, watch_query, timeout=90):
                    now = time.monotonic()
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise RuntimeError(f"watch {self._path}: {obj.get('message')}")
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event.get("type") == "BOOKMARK":
                        continue
                    self.events += 1
                    mark = self._classify(event["type"], obj)
                    if mark is not None:
                        with self._lock:
                            self.marks.setdefault(mark, {}).setdefault(self._key(obj), now)
                            self._lock.notify_all()
                    if self._stop.is_set():
                        return
        except BaseException as exc:  # noqa: BLE001 - reported by wait_for
            self.error = exc
            self._ready.set()
            with self._lock:
                self._lock.notify_all()

    def count(self, mark: str) -> int:
        with self._lock:
            return len(self.marks.get(mark, {}))

    def times(self, mark: str) -> dict[str, float]:
        with self._lock:
            return dict(self.marks.get(mark, {}))

    def wait_for(self, mark: str, names: set[str] | int, timeout: float,
                 progress: Callable[[int], None] | None = None) -> bool:
        """Until every name (or that many names) has the mark; False on timeout."""
        deadline = time.monotonic() + timeout
        want = names if isinstance(names, int) else len(names)
        with self._lock:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"watch {self._path} failed: {self.error}") from self.error
                seen = self.marks.get(mark, {})
                done = len(seen) >= want if isinstance(names, int) else names.issubset(seen)
                if done:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 5))
                if progress is not None:
                    progress(len(self.marks.get(mark, {})))
