"""The MQTT door's adapter to the write path: every call from the bridge into `ingest_service.ingest`
goes through this module, so moving the door to a new write-path API is a change here alone.

One message, the same stages as `POST /ingest`:

    parse     split_items (one JSON event, a JSON array or NDJSON; the MQTT 5 Content Type property
              plays the part of the HTTP header), the same limits (a refused message is answered
              and not stored, like a 413)
    decide    the door's own rule first: the device id (telemetry) or serial (startup) in the topic
              must be the one in the payload, else the item is stored as `invalid`/`topic_mismatch`;
              then the write path's validation, as for HTTP
    write     IngestService.ingest (group commit), ledger row per item, one outcome each
    answer    the HTTP result shape: one result for a single event, a list for a batch

Redelivery de-duplication (until the write path's delivery keys land, see `MqttDoor.handle`): each
message has a key (`message_key`), stored as the ledger rows' request_id (`mqtt:<key>`); a message
whose key is in the ledger already is answered with the stored results and writes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest_service.core.config import Settings
from ingest_service.ingest.body import BodyItem, BodyRejected, split_items
from ingest_service.ingest.results import ItemResult, RequestMeta
from ingest_service.ingest.service import DatabaseUnavailable, IngestService
from ingest_service.mqtt.topics import Route

__all__ = ["DatabaseUnavailable", "MqttDoor", "Reply", "message_key", "open_door"]

# Ledger request ids of MQTT messages: the prefix and 64 hex digits, 69 characters. An HTTP client's
# X-Request-ID is at most 64 characters (core/logging.py), so it can never pose as an MQTT message.
REQUEST_ID_PREFIX = "mqtt:"
TOPIC_MISMATCH = "topic_mismatch"
STARTUP = "device_startup"

# The stored results of messages, rebuilt from their ledger rows and outcomes. The partial index of
# migration 0004_mqtt serves the lookup; the repeated `like` lets the planner use it.
STORED_RESULTS = """
select r.request_id, r.id, p.id, d.processed_record_id, s.device_id, e.reason, e.detail, e.device_id
from ingest.raw_record r
left join ingest.processed_record p on p.raw_record_id = r.id
left join ingest.raw_duplicate d on d.raw_record_id = r.id
left join ingest.device_startup s on s.raw_record_id = r.id
left join ingest.ingest_error e on e.raw_record_id = r.id
where r.request_id = any(%b::text[]) and r.request_id like 'mqtt:%%'
order by r.request_id, r.batch_index
"""
# An ingest_error row keeps the reason, not the status the answer gave; every reason not listed is
# `invalid` (validation.py, ratelimit.py, service._store_as_errors). Goes away with delivery keys,
# which store the results themselves.
ERROR_STATUS = {
    "invalid_token": "unauthorized",
    "stale_startup": "unauthorized",
    "too_many_failed_startups": "rate_limited",
    "internal_error": "error",
}


def message_key(topic: str, payload: bytes, content_type: str | None, correlation_data: bytes | None) -> str:
    """The identity of one MQTT message, the same on every delivery of it: SHA-256 over its topic,
    Content Type, Correlation Data and payload (each length-prefixed, so no two splits collide).

    Why these: a redelivery (after the bridge crashed or lost its connection before acknowledging,
    or to another bridge of the shared group) is the same PUBLISH, so the same topic, properties
    and payload. Client id + packet id is not an identity: packet ids are 16-bit, per session, and
    reused as soon as a message is acknowledged, so after a restart the same id names another
    message. The topic is the device's identity (the broker's ACL lets a device publish only to its
    own topics), so identical payloads of two devices never share a key. Correlation Data (MQTT 5,
    set by a device per request and echoed in its result) tells apart identical payloads that a
    device means as two messages; without it identical payloads on one topic are one message, which
    for telemetry is no loss (the same device, type, time and value is one fact anyway).
    """
    digest = hashlib.sha256()
    for part in (topic.encode(), (content_type or "").encode(), correlation_data or b"", payload):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _topic_problem(route: Route, event: dict[str, Any]) -> str | None:
    """Why an event cannot come in by this topic, or None. Only ids the payload actually states are
    compared; a missing or mistyped one is left to validation (missing_field, wrong_type)."""
    event_type = event.get("event_type")
    if route.kind == "telemetry":
        if event_type == STARTUP:
            return "a device_startup is published to the <serial>/startup topic, not to a telemetry topic"
        device_id = event.get("device_id")
        if type(device_id) is int and str(device_id) != route.ident:
            return f"device_id {device_id} in the payload is not device {route.ident!r} of the topic"
        return None
    if isinstance(event_type, str) and event_type != STARTUP:
        return f"a {event_type[:64]!r} event is published to the <device_id>/telemetry topic, not to a startup topic"
    serial = event.get("serial")
    if isinstance(serial, str) and serial != route.ident:
        return f"serial {serial[:64]!r} in the payload is not serial {route.ident!r} of the topic"
    return None


def check_topic(route: Route, items: list[BodyItem]) -> None:
    """Mark each item whose payload names another device than its topic: it is stored as `invalid`
    with reason `topic_mismatch` (the write path stores an item's parse_error as its rejection)."""
    for item in items:
        if item.parse_error is None and type(item.parsed) is dict:
            problem = _topic_problem(route, item.parsed)
            if problem is not None:
                item.parse_error = (TOPIC_MISMATCH, problem)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the bridge publishes to the results topic, and what became of the message."""

    payload: bytes  # JSON: one result, a list of results (a batch), or a refusal
    stored: bool  # its rows are in the ledger (written now, or by an earlier delivery)
    replayed: bool = False  # an earlier delivery stored it: answered from the ledger, nothing written


def _answer(is_batch: bool, results: list[ItemResult]) -> bytes:
    if is_batch:
        return orjson.dumps([r.as_dict() for r in results])
    return orjson.dumps(results[0].as_dict())


def _refused(reason: str, detail: str) -> Reply:
    """A message refused whole (the HTTP 413 cases): nothing is stored, the answer says why.
    The same body as the HTTP refusal (api/routes/ingest.py); a device splits and publishes again."""
    body = {"raw_id": None, "processed_id": None, "status": "refused", "reason": reason, "detail": detail}
    return Reply(orjson.dumps({**body, "stored": False}), stored=False)


def _stored_result(row: tuple) -> ItemResult:
    raw_id, fact_id, duplicate_of, startup_device, reason, detail, error_device = row[1:]
    if fact_id is not None:
        return ItemResult(raw_id, "ok", processed_id=fact_id)
    if duplicate_of is not None:
        return ItemResult(raw_id, "duplicate", processed_id=duplicate_of)
    if startup_device is not None:
        return ItemResult(raw_id, "provisioned", device_id=startup_device)
    return ItemResult(raw_id, ERROR_STATUS.get(reason, "invalid"), reason=reason, detail=detail, device_id=error_device)


class StoredResults:
    """Looks message keys up in the ledger; the keys asked for in one event-loop turn (the messages
    of one read from the broker) share one query."""

    def __init__(self, pool: AsyncConnectionPool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self._asked: dict[str, list[asyncio.Future[list[ItemResult]]]] = {}
        self._queries: set[asyncio.Future[None]] = set()

    async def results(self, request_id: str) -> list[ItemResult]:
        """The stored results of the message with this request id, or [] when it is not stored."""
        loop = asyncio.get_running_loop()
        if not self._asked:
            loop.call_soon(self._flush)
        future: asyncio.Future[list[ItemResult]] = loop.create_future()
        self._asked.setdefault(request_id, []).append(future)
        return await future

    def _flush(self) -> None:
        asked, self._asked = self._asked, {}
        task = asyncio.ensure_future(self._query(asked))
        self._queries.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self._queries.discard)

    async def _query(self, asked: dict[str, list[asyncio.Future[list[ItemResult]]]]) -> None:
        try:
            async with self.pool.connection(timeout=self.timeout) as conn:
                cur = await conn.execute(STORED_RESULTS, (list(asked),))
                rows = await cur.fetchall()
        except Exception as exc:  # every waiter gets an answer, never a hang
            failure = DatabaseUnavailable(str(exc)) if isinstance(exc, psycopg.OperationalError | PoolTimeout) else exc
            for futures in asked.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(failure)
            return
        found: dict[str, list[ItemResult]] = {}
        for row in rows:
            found.setdefault(row[0], []).append(_stored_result(row))
        for request_id, futures in asked.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(request_id, []))


class MqttDoor:
    def __init__(self, service: IngestService, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.service = service
        self.pool = pool
        self.settings = settings
        # Keys being handled in this process: a second delivery of the same message waits for the
        # first instead of racing it to the ledger.
        self._in_flight: dict[str, asyncio.Event] = {}
        self._lookup = StoredResults(pool, settings.request_timeout_seconds)

    async def handle(
        self, route: Route, topic: str, payload: bytes, content_type: str | None, correlation_data: bytes | None
    ) -> Reply:
        """Store one message (or find it stored) and return its answer. Raises DatabaseUnavailable
        when the database cannot take it: nothing was stored, the caller retries.

        De-duplication until the write path's delivery keys land: look the key up in the ledger,
        write only when it is not there. Redeliveries within this process are serialised by key
        (`_in_flight`), and a redelivery after a crash finds the rows its first delivery committed.
        The race left: two bridge processes handling the same message at the same moment (a broker
        that hands an unacknowledged message of a bridge that lost its connection to another bridge
        while the first is still committing it; Mosquitto keeps it for the first bridge's session)
        can both miss the lookup and store it twice. Facts stay single (uq_processed_event: the
        second copy is a `duplicate`). Delivery keys close it: the key is written in the same
        transaction as the rows, and the second writer gets the stored results.
        """
        key = message_key(topic, payload, content_type, correlation_data)
        while (busy := self._in_flight.get(key)) is not None:
            await busy.wait()
        done = self._in_flight[key] = asyncio.Event()
        try:
            return await self._handle(route, key, payload, content_type)
        finally:
            del self._in_flight[key]
            done.set()

    async def _handle(self, route: Route, key: str, payload: bytes, content_type: str | None) -> Reply:
        settings = self.settings
        if len(payload) > settings.max_body_bytes:
            return _refused(
                "body_too_large", f"message of {len(payload)} bytes exceeds the {settings.max_body_bytes}-byte limit"
            )
        try:
            is_batch, items = split_items(payload, content_type, settings.max_batch_items)
        except BodyRejected as exc:
            return _refused(exc.reason, exc.detail)
        check_topic(route, items)
        request_id = REQUEST_ID_PREFIX + key
        stored = await self._lookup.results(request_id)
        if stored:
            return Reply(_answer(is_batch, stored), stored=True, replayed=True)
        meta = RequestMeta(
            request_id=request_id,
            content_type=content_type[:200] if content_type else None,
            content_encoding=None,
            remote_addr=None,  # the broker does not tell the device's address
        )
        results = await self.service.ingest(items, meta)
        return Reply(_answer(is_batch, results), stored=True)


@asynccontextmanager
async def open_door(settings: Settings, database_url: str) -> AsyncIterator[MqttDoor]:
    """The write path as the API's lifespan builds it (main.py): an autocommit pool whose
    statement timeout is the request timeout, and the group-commit service on it."""
    pool = AsyncConnectionPool(
        database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        open=False,
        kwargs={
            "options": f"-c statement_timeout={int(settings.request_timeout_seconds * 1000)}",
            "application_name": "mqtt_bridge",
            "autocommit": True,
        },
        timeout=settings.request_timeout_seconds,
    )
    await pool.open(wait=False)
    service = IngestService(pool, settings)
    await service.start()
    try:
        yield MqttDoor(service, pool, settings)
    finally:
        await service.stop()
        await pool.close()
