"""Per-key rate limiting: one token bucket per API key (or client address in local mode).

A token bucket allows short bursts (a mobile app flushing its offline queue) while holding
the sustained rate to ``rate`` per second. Writes cost one token per event, so a batch of
500 events weighs what 500 single calls would; reads cost one token per request.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from feedbackloop.errors import BackPressure

__all__ = ["RateLimited", "RateLimiter"]


class RateLimited(BackPressure):
    """Over the key's rate; ``retry_after`` says when the request would fit."""


class RateLimiter:
    """Token buckets keyed by name; ``rate`` tokens per second refill up to ``burst``.

    ``rate`` of 0 disables limiting. At most ``max_keys`` buckets are kept (least recently
    used go first): a forgotten bucket simply starts full again, which errs on the side of
    letting traffic through rather than growing without bound under many client addresses.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def retry_after(self, key: str, cost: float = 1.0) -> float:
        """Seconds until ``key``'s bucket holds ``cost`` tokens (0: it does now); takes none."""
        if not self.enabled:
            return 0.0
        cost = min(float(cost), float(self.burst))
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        return 0.0 if tokens >= cost else (cost - tokens) / self.rate

    def acquire(self, key: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from ``key``'s bucket or raise :class:`RateLimited`.

        A cost above ``burst`` is charged as ``burst``: a request the size limits allow must
        be able to pass eventually.
        """
        if not self.enabled:
            return
        cost = min(float(cost), float(self.burst))
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                allowed = True
            else:
                self._buckets[key] = (tokens, now)
                allowed = False
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        if not allowed:
            wait = (cost - tokens) / self.rate
            raise RateLimited(
                f"rate limit exceeded ({self.rate:g}/s, burst {self.burst}); retry in "
                f"{math.ceil(wait)} s",
                retry_after=wait,
            )
