"""The counters /healthz and /metrics read; the hot path only bumps integers."""

from __future__ import annotations

from collections import Counter

from .metrics import LATENCY_BOUNDS, Histogram


class Stats:
    def __init__(self) -> None:
        self.messages_stored = 0
        self.deliveries = 0
        """new_message frames handed to subscribers."""
        self.errors: Counter[str] = Counter()
        """Error frames sent, by code."""
        self.slow_consumer_closes = 0
        self.flood_closes = 0
        self.rate_limited = 0
        self.room_updates = 0
        self.connections_refused: Counter[str] = Counter()


class ApiStats:
    """The server API's requests, by method, route and status, and their latency."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency = Histogram(LATENCY_BOUNDS)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        self.latency.observe(seconds)


class WebhookStats:
    """Webhook deliveries by result (``delivered``, ``failed``, ``gave_up``), retries, and
    how many events wait, per receiver."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        self.retries = 0
        self.queue_depth: dict[str, int] = {}
