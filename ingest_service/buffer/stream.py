"""The JetStream side of buffered ingest: the connection, the stream of requests, its dead-letter
stream, the writers' durable consumer, and their state for /metrics and /readyz.

Subjects (`INGEST_BUFFER_SUBJECT_PREFIX`, default `ingest`):

    ingest.requests.<partition>    one message per accepted request (stream INGEST)
    ingest.dead.<request id>       a request no writer could store (stream INGEST_DEAD)

The dead-letter stream also captures JetStream's own max-deliveries advisory for the consumer, the
last resort when a writer dies while it moves a message there.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from ingest_service.core.config import Settings

log = logging.getLogger(__name__)
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
# How long the API and the writers wait for one JetStream API call (stream and consumer info).
API_TIMEOUT_SECONDS = 2.0


class BufferUnavailable(Exception):
    """NATS or the stream cannot take or answer a request now; nothing was stored."""


@dataclass(frozen=True, slots=True)
class BufferNames:
    stream: str
    dead_stream: str
    consumer: str
    prefix: str
    partitions: int

    @classmethod
    def of(cls, settings: Settings) -> BufferNames:
        stream = settings.ingest_buffer_stream
        return cls(
            stream=stream,
            dead_stream=f"{stream}_DEAD",
            consumer=settings.ingest_buffer_consumer,
            prefix=settings.ingest_buffer_subject_prefix,
            partitions=settings.ingest_buffer_partitions,
        )

    @property
    def request_subjects(self) -> str:
        return f"{self.prefix}.requests.*"

    def request_subject(self, partition_key: str) -> str:
        """One subject per partition: a stable hash of the key (a body's first device id or serial)."""
        return f"{self.prefix}.requests.{zlib.crc32(partition_key.encode()) % self.partitions}"

    def dead_subject(self, request_id: str) -> str:
        return f"{self.prefix}.dead.{request_id}"

    @property
    def max_deliveries_advisory(self) -> str:
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.consumer}"


def stream_configs(settings: Settings, names: BufferNames) -> tuple[StreamConfig, StreamConfig]:
    """The requests' stream and the dead-letter stream. Both refuse new messages when full
    (discard=new): dropping the oldest would lose requests the API has acknowledged."""
    common: dict[str, Any] = {
        "discard": DiscardPolicy.NEW,
        "storage": StorageType(settings.ingest_buffer_storage),
        "num_replicas": settings.ingest_buffer_replicas,
        "max_bytes": settings.ingest_buffer_max_bytes,
        "max_age": settings.ingest_buffer_max_age_seconds,
        "duplicate_window": settings.ingest_buffer_duplicate_window_seconds,
    }
    requests = StreamConfig(
        name=names.stream,
        description="Ingest requests accepted by the API (202), waiting for a writer",
        subjects=[names.request_subjects],
        retention=RetentionPolicy(settings.ingest_buffer_retention),
        **common,
    )
    dead = StreamConfig(
        name=names.dead_stream,
        description="Ingest requests no writer could store, with the reason; and max-deliveries advisories",
        subjects=[names.dead_subject("*"), names.max_deliveries_advisory],
        retention=RetentionPolicy.LIMITS,
        **common,
    )
    return requests, dead


def consumer_config(settings: Settings, names: BufferNames) -> ConsumerConfig:
    """The writers' durable pull consumer. A writer moves a message to the dead-letter stream on its
    delivery after `max_deliver`, before trying it; the consumer's own limit is one more, so only a
    writer that dies while doing that leaves a message behind (and the advisory says which)."""
    return ConsumerConfig(
        durable_name=names.consumer,
        description="iot-platform writer processes: store buffered requests in PostgreSQL",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ingest_buffer_ack_wait_seconds,
        max_deliver=settings.ingest_buffer_max_deliver + 1,
        max_ack_pending=settings.ingest_buffer_max_ack_pending,
        filter_subject=names.request_subjects,
    )


async def connect(settings: Settings, name: str) -> NATS:
    """Connect, retrying until NATS answers; reconnects forever afterwards.

    pending_size=0: while disconnected, a publish fails at once (the API answers 503) instead of
    waiting in the client's buffer, from where it could reach the stream after the client was told
    to retry.
    """

    nc = NATS()

    async def disconnected() -> None:
        if not nc.is_closed:  # closing on purpose is no news
            log.warning("disconnected from NATS", extra={"fields": {"client": name}})

    async def reconnected() -> None:
        log.warning("reconnected to NATS", extra={"fields": {"client": name}})

    async def error(exc: Exception) -> None:
        log.debug("NATS client error: %s", exc)

    await nc.connect(
        servers=[settings.nats_url or DEFAULT_NATS_URL],
        name=name,
        pending_size=0,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
    )
    return nc


async def ensure_stream(js: JetStreamContext, settings: Settings) -> BufferNames:
    """Create the streams and the consumer, or bring their limits and replicas up to the settings.
    Idempotent; writers and `iot-platform migrate` both call it."""
    names = BufferNames.of(settings)
    for config in stream_configs(settings, names):
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # it exists with another configuration
            try:
                await js.update_stream(config)
            except nats.js.errors.APIError as exc:
                raise RuntimeError(
                    f"stream {config.name} exists with settings that cannot change ({exc.description}); "
                    "retention and storage are fixed at creation: delete it once it is empty, or keep its settings"
                ) from exc
    await js.add_consumer(names.stream, consumer_config(settings, names))
    return names


def ensure_stream_sync(settings: Settings, timeout: float = 30.0) -> str:
    """`iot-platform migrate` / `serve`: create or update the stream; returns a line for the log."""

    async def run() -> str:
        nc = await asyncio.wait_for(connect(settings, "iot-platform-migrate"), timeout)
        try:
            names = await ensure_stream(nc.jetstream(timeout=API_TIMEOUT_SECONDS), settings)
        finally:
            await nc.close()
        return f"stream {names.stream} (+ {names.dead_stream}), consumer {names.consumer}"

    try:
        return asyncio.run(run())
    except TimeoutError as exc:
        raise RuntimeError(
            f"NATS at {settings.nats_url or DEFAULT_NATS_URL} did not answer in {timeout:.0f} s"
        ) from exc


@dataclass(frozen=True, slots=True)
class BufferState:
    """The backlog as JetStream sees it, across every writer."""

    pending: int  # in the stream, not yet delivered to a writer
    ack_pending: int  # delivered, not yet acknowledged (being stored, or to be redelivered)
    redelivered: int  # of those, delivered more than once
    dead_letters: int  # messages in the dead-letter stream (requests and advisories)
    stream_messages: int
    stream_bytes: int

    @property
    def lag(self) -> int:
        return self.pending + self.ack_pending

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "lag": self.lag}


async def buffer_state(js: JetStreamContext, names: BufferNames) -> BufferState:
    try:
        consumer = await js.consumer_info(names.stream, names.consumer, timeout=API_TIMEOUT_SECONDS)
        stream = await js.stream_info(names.stream)
        dead = await js.stream_info(names.dead_stream)
    except (nats.errors.Error, TimeoutError) as exc:
        raise BufferUnavailable(f"JetStream did not answer: {type(exc).__name__}") from exc
    return BufferState(
        pending=consumer.num_pending or 0,
        ack_pending=consumer.num_ack_pending or 0,
        redelivered=consumer.num_redelivered or 0,
        dead_letters=dead.state.messages,
        stream_messages=stream.state.messages,
        stream_bytes=stream.state.bytes,
    )
