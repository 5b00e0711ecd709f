"""Prometheus metrics of the ingest path."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class IngestMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "ingest_requests", "HTTP requests to /ingest by response status", ["status_code"], registry=r
        )
        self.items = Counter(
            "ingest_items", "Ingested items by outcome status and reason", ["status", "reason"], registry=r
        )
        self.latency = Histogram(
            "ingest_request_duration_seconds",
            "Time to answer an /ingest request",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "ingest_commit_duration_seconds",
            "Time to write and commit one group",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commit_items = Histogram(
            "ingest_commit_items",
            "Items per committed group",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000),
            registry=r,
        )
        self.queue_depth = Gauge(
            "ingest_queue_depth", "Requests waiting for a writer", registry=r, multiprocess_mode="livesum"
        )
        self._item_children: dict[tuple[str, str], Any] = {}
        self._request_children: dict[int, Any] = {}

    # labels() validates and locks on every call; the hot path keeps the few children it uses.
    def count_item(self, status: str, reason: str | None, count: int = 1) -> None:
        key = (status, reason or "")
        child = self._item_children.get(key)
        if child is None:
            child = self._item_children[key] = self.items.labels(*key)
        child.inc(count)

    def count_request(self, status_code: int) -> None:
        child = self._request_children.get(status_code)
        if child is None:
            child = self._request_children[status_code] = self.requests.labels(str(status_code))
        child.inc()


METRICS = IngestMetrics()


def exposition() -> bytes:
    """The metrics text. With several uvicorn workers (PROMETHEUS_MULTIPROC_DIR set by
    `iot-platform serve --workers N`), every worker's values are summed, whichever answers the scrape."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(METRICS.registry)
