"""The seam between batching and the wire: a transport sends one batch and answers per line.

A transport knows its wire (`http_transport`: `POST /ingest`; `mqtt_transport`: one QoS 1 message
per line on `devices/{device_id}/telemetry` or `devices/{serial}/startup`) and nothing of batching,
retries or accounting. It returns one outcome per line, in order, or raises one of the failures
below, which tell `retry.Sender` what to do with the batch.
"""

from __future__ import annotations

from typing import Protocol

from publisher.delivery.config import PipeConfig
from publisher.delivery.items import Line, Outcome


class DeliveryFailure(Exception):
    """The batch got no per-line answer. `reason` is a stable code for the summary (`http_503`,
    `ConnectError`); `detail` is the human message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Retryable(DeliveryFailure):
    """Transient (connection lost, timeout, 5xx, 429): the same batch may succeed later. Sending it
    again is safe because the platform is idempotent: a replayed fact comes back `duplicate`."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after  # seconds the other side asked us to wait, if it did


class Rejected(DeliveryFailure):
    """Permanent for this batch (a 4xx other than those with results): retrying cannot help."""


class TooLarge(DeliveryFailure):
    """The batch is over the other side's limit; nothing of it was stored. Halves may fit."""


class Transport(Protocol):
    """Sends batches; safe to call from several threads at once (`--concurrency`)."""

    def send(self, lines: list[Line]) -> list[Outcome]:
        """One outcome per line, in order: the other side's result, or `Undelivered` for a line it
        refused outright; raises a `DeliveryFailure` when the batch got no per-line answer."""
        ...

    def close(self) -> None: ...


def open_transport(config: PipeConfig) -> Transport:
    """The transport `config.transport` names (imported here, so only the one in use is loaded)."""
    if config.transport == "http":
        from publisher.delivery.http_transport import HttpTransport

        return HttpTransport(config, config.timeout, connections=config.concurrency)
    if config.transport == "mqtt":
        from publisher.delivery.mqtt_transport import MqttTransport

        # paho queues what it cannot send yet; bound it like the pipe's own queue.
        return MqttTransport(config, config.timeout, max_queued=max(1000, config.batch * (config.concurrency + 1)))
    raise ValueError(f"unknown transport {config.transport!r}")
