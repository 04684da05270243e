"""What /metrics shows: the live counters and histograms as Prometheus metric families,
read at scrape time so the hot path only bumps integers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .interfaces import Broker, MessageStore
from .metrics import Histogram, LoopLagMonitor
from .stats import Stats


class MetricsCollector(Collector):
    """Reads the live counters at scrape time, so the hot path only bumps integers."""

    def __init__(self, stats: Stats, broker: Broker[Any], store: MessageStore, loop_lag: LoopLagMonitor) -> None:
        self._stats = stats
        self._broker = broker
        self._store = store
        self._loop_lag = loop_lag

    def collect(self) -> Iterator[Metric]:
        stats, hub, store = self._stats, self._broker, self._store
        yield GaugeMetricFamily("unichatd_connections", "Open WebSocket connections.",
                                value=hub.connection_count)
        yield GaugeMetricFamily("unichatd_rooms_active", "Rooms with at least one subscriber.",
                                value=hub.active_rooms)
        yield CounterMetricFamily("unichatd_messages_stored", "Messages committed.",
                                  value=stats.messages_stored)
        yield CounterMetricFamily("unichatd_messages_delivered",
                                  "new_message frames handed to room subscribers.", value=stats.deliveries)
        yield CounterMetricFamily("unichatd_room_updates_sent", "room_updated frames sent.",
                                  value=stats.room_updates)
        errors = CounterMetricFamily("unichatd_errors", "Error frames sent, by code.",
                                     labels=["code"])
        for code, count in sorted(stats.errors.items()):
            errors.add_metric([code], count)
        yield errors
        refused = CounterMetricFamily("unichatd_connections_refused",
                                      "Handshakes refused, by reason.", labels=["reason"])
        for reason, count in sorted(stats.connections_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily("unichatd_send_queue_drops",
                                  "Connections closed as slow consumers (send buffer full).",
                                  value=stats.slow_consumer_closes)
        yield CounterMetricFamily("unichatd_flood_closes",
                                  "Connections closed for flooding after rate limiting.",
                                  value=stats.flood_closes)
        yield GaugeMetricFamily("unichatd_subscriptions", "Room subscriptions of open connections.",
                                value=hub.subscription_count)
        yield CounterMetricFamily("unichatd_rate_limited", "Requests refused with rate_limited.",
                                  value=stats.rate_limited)
        yield _histogram("unichatd_db_write_batch_size", "Operations per group-commit transaction.",
                         store.batch_sizes)
        yield _histogram("unichatd_db_write_seconds", "Group-commit transaction latency.",
                         store.write_latency)
        yield _histogram("unichatd_event_loop_lag_seconds", "How late the event loop wakes a timer.",
                         self._loop_lag.histogram)


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.buckets(),
                                 sum_value=histogram.total)
