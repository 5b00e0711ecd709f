"""`iot-platform writer`: store buffered requests from JetStream in PostgreSQL, through the same
write path as POST /ingest.

Each writer process runs `INGEST_BUFFER_FETCHERS` pull loops on the one durable consumer; JetStream
hands each message to one of them, across every writer process. A loop fetches up to
`INGEST_BUFFER_FETCH_BATCH` messages, stores them concurrently (the write path commits them in
groups) and acknowledges each message only after its commit. Each message's id is its delivery key
(buffer/door.py): a redelivery (after a crash or a lost acknowledgement, also to a second writer
while the first is still at work) is answered from the ledger and writes nothing.

- Database unavailable: the loop keeps its messages (telling JetStream it is still working on them,
  so they are not redelivered elsewhere), retries with a growing pause, and fetches nothing new
  meanwhile; the stream holds the backlog.
- A message that cannot be stored (its body refused by this writer's limits, no request id, or a
  write that fails `INGEST_BUFFER_MAX_DELIVER` times) goes to the dead-letter stream with its reason.
- SIGTERM: the loops finish their groups, hand back what they could not store, and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from typing import Any

import nats.errors
import psycopg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import start_http_server
from psycopg_pool import PoolTimeout

from ingest_service.buffer import door
from ingest_service.buffer.metrics import WriterMetrics
from ingest_service.buffer.receipts import DEAD_DETAIL, DEAD_REASON
from ingest_service.buffer.stream import (
    API_TIMEOUT_SECONDS,
    BufferNames,
    BufferUnavailable,
    buffer_state,
    connect,
    ensure_stream,
)
from ingest_service.core.config import Settings
from ingest_service.core.database import resolve_target, write_pool
from ingest_service.core.observability import METRICS

log = logging.getLogger(__name__)
# Failures that mean "the database is not taking writes now": hold the messages and retry.
UNAVAILABLE = (door.DatabaseUnavailable, psycopg.OperationalError, PoolTimeout)
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.25, 5.0
STATE_REFRESH_SECONDS = 5.0
FETCH_WAIT_SECONDS = 5.0


class _Held:
    """Messages a loop is working on: JetStream is told so every third of ack_wait."""

    def __init__(self, messages: list[Msg]) -> None:
        self._messages = {id(msg): msg for msg in messages}  # Msg is not hashable

    def __contains__(self, msg: Msg) -> bool:
        return id(msg) in self._messages

    def __len__(self) -> int:
        return len(self._messages)

    def discard(self, msg: Msg) -> None:
        self._messages.pop(id(msg), None)

    async def keep_alive(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._messages.values()):
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()


class BufferWriter:
    def __init__(
        self,
        settings: Settings,
        service: door.IngestService,
        js: JetStreamContext,
        metrics: WriterMetrics,
    ) -> None:
        self.settings = settings
        self.service = service
        self.js = js
        self.names = BufferNames.of(settings)
        self.metrics = metrics
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        subscriptions = [
            await self.js.pull_subscribe_bind(durable=self.names.consumer, stream=self.names.stream)
            for _ in range(self.settings.ingest_buffer_fetchers)
        ]
        refresh = asyncio.create_task(self._refresh_state())
        try:
            await asyncio.gather(*(self._loop(sub) for sub in subscriptions))
        finally:
            refresh.cancel()
            for sub in subscriptions:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self.stopping.is_set():
            try:
                # A generous wait: messages the server sends after the client stopped waiting stay in
                # the subscription, unextended, and come back as redeliveries after ack_wait.
                messages = await sub.fetch(self.settings.ingest_buffer_fetch_batch, timeout=FETCH_WAIT_SECONDS)
            except TimeoutError:  # nothing to do (nats-py raises both its own and asyncio's)
                continue
            except nats.errors.Error as exc:  # NATS reconnecting: the client retries on its own
                log.debug("fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self.handle(messages)
            except Exception:  # a bug must not stop the writer: the messages come back after ack_wait
                log.exception("handling %d buffered requests failed", len(messages))
                await asyncio.sleep(1.0)

    async def handle(self, messages: list[Msg]) -> None:
        """Store a fetched group; every message ends acknowledged, dead-lettered or handed back."""
        pending: list[tuple[Msg, door.BufferedRequest]] = []
        for msg in messages:
            if msg.metadata.num_delivered > 1:
                self.metrics.redeliveries.inc()
            try:
                pending.append((msg, door.decode(msg.headers, msg.data, self.settings)))
            except door.BodyRejected as exc:
                await self._dead_letter(msg, exc.reason, exc.detail)
            except door.MalformedMessage as exc:
                await self._dead_letter(msg, "malformed_message", str(exc))
        held = _Held([msg for msg, _ in pending])
        alive = asyncio.create_task(held.keep_alive(self.settings.ingest_buffer_ack_wait_seconds / 3))
        pause = RETRY_FIRST_SECONDS
        try:
            while pending:
                try:
                    await self._attempt(pending, held)
                except UNAVAILABLE as exc:
                    log.warning("database unavailable; holding %d buffered requests: %s", len(held), exc)
                # Every message that ended (acknowledged, dead-lettered, handed back) has left `held`.
                pending = [(msg, request) for msg, request in pending if msg in held]
                if not pending:
                    break
                self.metrics.retries.inc()
                if self.stopping.is_set():  # another writer takes them now rather than after ack_wait
                    for msg, _ in pending:
                        with contextlib.suppress(nats.errors.Error):
                            await msg.nak()
                    return
                await asyncio.sleep(pause)
                pause = min(RETRY_MAX_SECONDS, pause * 2)
        finally:
            alive.cancel()

    async def _attempt(self, pending: list[tuple[Msg, door.BufferedRequest]], held: _Held) -> None:
        """One try at the group. What must wait for the database stays in `held`."""
        todo = []
        for msg, request in pending:
            if msg.metadata.num_delivered > self.settings.ingest_buffer_max_deliver:
                # delivered before, and maybe never stored: a writer died on it, every time
                if await door.recorded(self.service, request.request_id) is not None:
                    await self._ack(msg, held, "already_stored")
                else:
                    await self._dead_letter(msg, "max_deliveries", "no writer stored it in its deliveries", held)
            else:
                todo.append((msg, request))
        outcomes = await asyncio.gather(*(door.store(self.service, r) for _, r in todo), return_exceptions=True)
        for (msg, request), outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, door.Answer):
                if outcome.replayed:  # an earlier delivery stored it (and counted its items)
                    await self._ack(msg, held, "already_stored")
                else:
                    self._count_items(outcome.results)
                    await self._ack(msg, held, "stored")
            elif isinstance(outcome, door.DeliveryKeyReused):  # an Idempotency-Key reused for another body
                await self._dead_letter(msg, "idempotency_key_reused", str(outcome), held)
            elif not isinstance(outcome, UNAVAILABLE):  # unavailable: stays held, for the next try
                await self._failed(msg, request, outcome, held)

    async def _ack(self, msg: Msg, held: _Held, outcome: str) -> None:
        held.discard(msg)
        # Not confirmed: if the acknowledgement is lost, the redelivery is answered from the ledger.
        with contextlib.suppress(nats.errors.Error):
            await msg.ack()
        self.metrics.messages.labels(outcome).inc()
        self.metrics.delivery_seconds.observe(max(0.0, time.time() - msg.metadata.timestamp.timestamp()))

    async def _failed(self, msg: Msg, request: door.BufferedRequest, exc: BaseException, held: _Held) -> None:
        log.error("storing buffered request %s failed", request.request_id, exc_info=exc)
        if msg.metadata.num_delivered >= self.settings.ingest_buffer_max_deliver:
            await self._dead_letter(msg, "write_failed", f"the write path failed: {type(exc).__name__}", held)
            return
        held.discard(msg)
        with contextlib.suppress(nats.errors.Error):
            await msg.nak(delay=self.settings.ingest_buffer_ack_wait_seconds / 10)
        self.metrics.messages.labels("failed").inc()

    async def _dead_letter(self, msg: Msg, reason: str, detail: str, held: _Held | None = None) -> None:
        """Move the message, as it was, to the dead-letter stream with its reason; then terminate its
        delivery. Should the dead-letter stream not take it, the message stays for a redelivery."""
        headers = dict(msg.headers or {})
        request_id = headers.get(door.MSG_ID, "")
        if not door.is_request_id(request_id):
            request_id = f"seq-{msg.metadata.sequence.stream}"
        headers.update({door.MSG_ID: request_id, DEAD_REASON: reason, DEAD_DETAIL: detail[:300]})
        log.error("dead-lettering buffered request %s: %s (%s)", request_id, reason, detail)
        try:
            await self.js.publish(
                self.names.dead_subject(request_id), msg.data, stream=self.names.dead_stream, headers=headers
            )
        except nats.errors.Error as exc:
            log.error("the dead-letter stream did not take %s: %s", request_id, exc)
            return
        if held is not None:
            held.discard(msg)
        with contextlib.suppress(nats.errors.Error):
            await msg.term()
        self.metrics.messages.labels("dead_lettered").inc()

    @staticmethod
    def _count_items(results: list[door.ItemResult]) -> None:
        for (status, reason), count in Counter((r.status, r.reason) for r in results).items():
            METRICS.count_item(status, reason, count)

    async def _refresh_state(self) -> None:
        while True:
            try:
                self.metrics.state.state = await buffer_state(self.js, self.names)
            except BufferUnavailable:
                self.metrics.state.state = None
            await asyncio.sleep(STATE_REFRESH_SECONDS)


async def _ensured(nc: NATS, settings: Settings) -> bool:
    """Create or update the streams and the consumer; False (logged) while JetStream cannot answer."""
    try:
        await ensure_stream(nc.jetstream(timeout=10.0), settings)
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("JetStream did not set up the stream yet: %s", exc)
        return False
    return True


async def run_writer(settings: Settings, metrics_port: int | None = None) -> None:
    """The writer process: its own pools and write service, until SIGTERM or SIGINT."""
    target = resolve_target(settings)
    pool = write_pool(settings, target.url, "jetstream_writer")
    await pool.open(wait=False)
    service = await door.start_service(pool, settings)
    metrics = WriterMetrics(METRICS.registry)
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1", registry=METRICS.registry)
    loop = asyncio.get_running_loop()
    nc = None
    writer: BufferWriter | None = None
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        connecting = asyncio.create_task(connect(settings, "ingest-writer"))
        await asyncio.wait([connecting, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            return
        nc = connecting.result()
        js = nc.jetstream(timeout=API_TIMEOUT_SECONDS)
        while not await _ensured(nc, settings):
            if stop.is_set():
                return
            await asyncio.sleep(1.0)
        writer = BufferWriter(settings, service, js, metrics)
        running = asyncio.create_task(writer.run())
        log.warning(
            "writer started",
            extra={"fields": {"stream": writer.names.stream, "fetchers": settings.ingest_buffer_fetchers}},
        )
        await asyncio.wait([running, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        writer.stopping.set()
        await running
    finally:
        if nc is not None:
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()
        await service.stop()
        await pool.close()


def main(settings: Settings, metrics_port: int | None) -> int:
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(run_writer(settings, metrics_port))
    return 0
