"""Live measurements for /metrics: plain counters and fixed-bucket histograms.

The hot path only bumps integers here; ``prometheus_client`` formats them at scrape
time (see ``prometheus``).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Sequence


class Histogram:
    """Cumulative-bucket histogram in the Prometheus sense, without locks or labels."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """(upper bound, cumulative count) pairs ending with +Inf."""
        cumulative, result = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            result.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        return result


LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class LoopLagMonitor:
    """How late the event loop wakes a sleeper: a stalled loop delays every client."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.histogram = Histogram(LATENCY_BOUNDS)
        self.last = 0.0

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.last = max(0.0, time.perf_counter() - started - self.interval)
            self.histogram.observe(self.last)
