"""What /metrics shows: the live counters and histograms as Prometheus metric families,
read at scrape time so the hot path only bumps integers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .interfaces import Broker, MessageStore
from .metrics import Histogram, LoopLagMonitor
from .stats import ApiStats, Stats, WebhookStats


class MetricsCollector(Collector):
    """Reads the live counters at scrape time, so the hot path only bumps integers."""

    def __init__(self, stats: Stats, broker: Broker[Any], store: MessageStore, loop_lag: LoopLagMonitor,
                 api: ApiStats | None = None, webhooks: WebhookStats | None = None) -> None:
        self._stats = stats
        self._api = api or ApiStats()
        self._webhooks = webhooks or WebhookStats()
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
        yield _by_label(CounterMetricFamily("unichatd_errors", "Error frames sent, by code.", labels=["code"]),
                        stats.errors)
        yield _by_label(CounterMetricFamily("unichatd_connections_refused", "Handshakes refused, by reason.",
                                            labels=["reason"]), stats.connections_refused)
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
        yield from self._api_and_webhooks()

    def _api_and_webhooks(self) -> Iterator[Metric]:
        api, webhooks = self._api, self._webhooks
        requests = CounterMetricFamily("unichatd_api_requests", "Server API requests, by method, route and status.",
                                       labels=["method", "route", "status"])
        for (method, route, status), count in sorted(api.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        yield _histogram("unichatd_api_request_seconds", "Server API request latency.", api.latency)
        yield _by_label(CounterMetricFamily("unichatd_webhook_deliveries", "Webhook POSTs, by result.",
                                            labels=["result"]), webhooks.deliveries)
        yield CounterMetricFamily("unichatd_webhook_retries", "Webhook deliveries retried after a failure.",
                                  value=webhooks.retries)
        yield _by_label(GaugeMetricFamily("unichatd_webhook_queue_depth", "Events waiting for each webhook receiver.",
                                          labels=["url"]), webhooks.queue_depth)


def _by_label(family: CounterMetricFamily | GaugeMetricFamily,
              values: Mapping[str, float]) -> CounterMetricFamily | GaugeMetricFamily:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.buckets(),
                                 sum_value=histogram.total)
