"""Token buckets, for send rates per user and frame rates per connection."""

from __future__ import annotations

import time


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; one token per event."""

    __slots__ = ("rate", "burst", "_tokens", "_updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = time.monotonic()

    def seconds_until_full(self) -> float:
        """How long until waiting longer would give nothing more (so forgetting it loses nothing)."""
        tokens = self._tokens + (time.monotonic() - self._updated) * self.rate
        return max(0.0, (self.burst - tokens) / self.rate)

    def take(self) -> int:
        """Take a token: 0 when granted, else the milliseconds until one is available."""
        now = time.monotonic()
        tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if tokens >= 1:
            self._tokens = tokens - 1
            return 0
        self._tokens = tokens
        return max(1, int((1 - tokens) / self.rate * 1000 + 0.999))


class FloodGuard:
    """Counts refusals in a window opened by the first of them; ``limit`` within it is a flood.

    A client that honours ``retry_after_ms`` is refused a few times at most; one that
    keeps sending regardless piles up refusals and is told apart from it here.
    """

    __slots__ = ("limit", "window", "_started", "_count")

    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._started = 0.0
        self._count = 0

    def refused(self) -> bool:
        """Record one refusal; True when the refusals in the window reach the limit."""
        now = time.monotonic()
        if now - self._started > self.window:
            self._started, self._count = now, 0
        self._count += 1
        return self._count >= self.limit
