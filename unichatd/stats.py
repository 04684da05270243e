"""The counters /healthz and /metrics read; the hot path only bumps integers."""

from __future__ import annotations

from collections import Counter


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
