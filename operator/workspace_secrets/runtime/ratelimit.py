"""Client-side request pacing for the operator's own API client, the way client-go paces every
controller: a token bucket (steady `qps`, bursts up to `burst`) plus a shared hold when the API server
is in trouble -- every caller then waits, not only the one that was told:

* 429/503 with Retry-After: nobody sends before it is over;
* consecutive failures (5xx, 429, no answer at all): a shared exponential hold (0.25 s doubling up to
  `max_hold`), reset by the first success. Per-key retries alone would multiply by the number of keys
  (a resync of a thousand objects during an outage); this makes the whole client back off in unison.

Together they bound the request rate no matter how many keys fail at once or which code path retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self, qps: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
        base_hold: float = 0.25, max_hold: float = 10.0,
    ) -> None:
        self._qps = qps
        self._base_hold = base_hold
        self._max_hold = max_hold
        self._failures = 0
        self._burst = max(1, burst)
        self._tokens = float(self._burst)
        self._clock = clock
        self._updated = clock()
        self._hold_until = 0.0
        self._lock = asyncio.Lock()

    def hold(self, seconds: float) -> None:
        """The server asked for a pause (Retry-After): nobody sends before it is over."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)

    def failed(self) -> None:
        """The server failed a request (5xx, 429) or did not answer: everyone backs off a little more."""
        self._failures += 1
        self.hold(min(self._base_hold * 2 ** (self._failures - 1), self._max_hold))

    def succeeded(self) -> None:
        self._failures = 0

    def delay(self) -> float:
        """Seconds until the next request may go (0: now); takes a token when it returns 0."""
        now = self._clock()
        if now < self._hold_until:
            return self._hold_until - now
        if self._qps <= 0:
            return 0.0  # unlimited
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._qps)
        self._updated = now
        if self._tokens >= 1 - 1e-9:  # (float sums of elapsed time land a hair below 1)
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return (1 - self._tokens) / self._qps

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: waiters are served in order, one token each
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)
