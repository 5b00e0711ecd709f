"""Prometheus metrics of buffered ingest.

The backlog (lag, redeliveries, dead letters) is JetStream's state, the same whichever process reads
it: the API reads it per scrape of /metrics, a writer every few seconds for its own metrics port.
What a writer did (messages stored, found already stored, dead-lettered) is counted per writer.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ingest_service.buffer.stream import BufferState

DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)

_GAUGES = (
    ("lag", "ingest_buffer_lag_messages", "Requests in the buffer not yet acknowledged by a writer"),
    ("pending", "ingest_buffer_pending_messages", "Requests not yet delivered to any writer"),
    ("ack_pending", "ingest_buffer_ack_pending_messages", "Requests delivered to a writer, not yet acknowledged"),
    ("redelivered", "ingest_buffer_redelivered_messages", "Unacknowledged requests delivered more than once"),
    ("dead_letters", "ingest_buffer_dead_letter_messages", "Messages in the dead-letter stream"),
    ("stream_messages", "ingest_buffer_stream_messages", "Messages held by the requests' stream"),
    ("stream_bytes", "ingest_buffer_stream_bytes", "Bytes held by the requests' stream"),
)


def state_families(state: BufferState | None) -> Iterator[GaugeMetricFamily]:
    up = GaugeMetricFamily("ingest_buffer_up", "1 when JetStream answered the last state query")
    up.add_metric([], 0 if state is None else 1)
    yield up
    if state is None:
        return
    values = state.as_dict()
    for key, name, documentation in _GAUGES:
        family = GaugeMetricFamily(name, documentation)
        family.add_metric([], values[key])
        yield family


class StateCollector(Collector):
    """Serves the last state it was given (a writer refreshes it in the background)."""

    def __init__(self) -> None:
        self.state: BufferState | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from state_families(self.state)


def state_exposition(state: BufferState | None) -> bytes:
    """The API's /metrics addition: the backlog as JetStream reports it right now."""
    collector = StateCollector()
    collector.state = state
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry)


class WriterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "ingest_buffer_messages",
            "Buffered requests a writer finished, by outcome: stored, already_stored (a redelivery of a "
            "stored request), dead_lettered, failed (handed back for redelivery after an error)",
            ["outcome"],
            registry=registry,
        )
        self.redeliveries = Counter(
            "ingest_buffer_redeliveries", "Messages received that were delivered before", registry=registry
        )
        self.retries = Counter(
            "ingest_buffer_store_retries",
            "Groups held and retried because the database was unavailable",
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "ingest_buffer_delivery_seconds",
            "From the stream's acknowledgement to the API to the writer's commit",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.state = StateCollector()
        registry.register(self.state)
