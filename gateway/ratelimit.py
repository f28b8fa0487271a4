"""A per-key token bucket: `rate` requests a minute, bursts up to the same number.

In-process (each instance keeps its own buckets): a limit is a fairness floor, not a
quota, so N instances allow up to N times the rate (docs/tenants.md says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ):
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, at)

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def take(self, key: str) -> float | None:
        """Spend one request; None when allowed, else the seconds until one is."""
        if not self.enabled:
            return None
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self._rate
        if len(self._buckets) >= self._max_keys and key not in self._buckets:
            self._prune(now)
        self._buckets[key] = (tokens - 1.0, now)
        return None

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled (they hold no information)."""
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self._rate >= self._burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self._max_keys:  # still full: the oldest go
            for k in sorted(self._buckets, key=lambda k: self._buckets[k][1])[: self._max_keys // 10]:
                del self._buckets[k]
