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

Redelivery de-duplication: each message has a key (`message_key`), given to the write path as its
delivery key (door "mqtt"). The write stage records the key in the same statement as the message's
ledger rows, so a redelivery (after a crash, a lost connection, or to another bridge of the shared
group, also while the first delivery is still being written) is answered with the stored results
and writes nothing: never a second raw row or fact.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from ingest_service.core.config import Settings
from ingest_service.core.database import write_pool
from ingest_service.ingest import (
    BodyItem,
    BodyRejected,
    DatabaseUnavailable,
    Delivery,
    IngestService,
    ItemResult,
    parse,
)
from ingest_service.mqtt.topics import Route

__all__ = ["DatabaseUnavailable", "MqttDoor", "Reply", "message_key", "open_door"]

DOOR = "mqtt"
TOPIC_MISMATCH = "topic_mismatch"
STARTUP = "device_startup"


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


class MqttDoor:
    def __init__(self, service: IngestService, settings: Settings) -> None:
        self.service = service
        self.settings = settings

    async def handle(
        self, route: Route, topic: str, payload: bytes, content_type: str | None, correlation_data: bytes | None
    ) -> Reply:
        """Store one message (or find it stored) and return its answer. Raises DatabaseUnavailable
        when the database cannot take it: nothing was stored, the caller does not acknowledge and
        the broker redelivers."""
        settings = self.settings
        if len(payload) > settings.max_body_bytes:
            return _refused(
                "body_too_large", f"message of {len(payload)} bytes exceeds the {settings.max_body_bytes}-byte limit"
            )
        try:
            parsed = parse(
                payload,
                content_type,
                None,
                max_inflated_bytes=settings.max_inflated_bytes,
                max_items=settings.max_batch_items,
            )
        except BodyRejected as exc:
            return _refused(exc.reason, exc.detail)
        check_topic(route, parsed.items)
        key = message_key(topic, payload, content_type, correlation_data)
        delivery = Delivery(
            door=DOOR,
            request_id=f"{DOOR}:{key}",
            content_type=content_type[:200] if content_type else None,
            key=key,  # the broker does not tell the device's address: no remote_addr
        )
        answer = await self.service.ingest(parsed.items, delivery)
        return Reply(_answer(parsed.is_batch, answer.results), stored=True, replayed=answer.replayed)


@asynccontextmanager
async def open_door(settings: Settings, database_url: str) -> AsyncIterator[MqttDoor]:
    """The write path as the API's lifespan builds it (main.py): its pool, and the group-commit
    service on it."""
    pool = write_pool(settings, database_url, "mqtt_bridge")
    await pool.open(wait=False)
    service = IngestService(pool, settings)
    await service.start()
    try:
        yield MqttDoor(service, settings)
    finally:
        await service.stop()
        await pool.close()
