"""The JetStream door's every call into the write path, in one module.

A buffered request travels as one JetStream message: the body as the client sent it (still gzip
when it came gzip) and its request context in headers. A writer turns the message back into the
items and `Delivery` the HTTP route would have made (`decode`) and stores them through the same
service (`store`); a receipt reads the stored results of its request (`recorded`).

Redelivery de-duplication: the message's id (`Nats-Msg-Id`, also the ledger's request id and the
front of its receipt) is its delivery key (door "jetstream"). The write stage records the key in
the same statement as the request's ledger rows, so a redelivery (after a writer crashed or lost an
acknowledgement, also to a second writer while the first is still at work) is answered with the
stored results and writes nothing: never a second raw row or fact.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from ingest_service.core.config import Settings
from ingest_service.core.logging import new_request_id
from ingest_service.ingest import (
    Answer,
    BodyItem,
    BodyRejected,
    DatabaseUnavailable,
    Delivery,
    DeliveryKeyReused,
    IngestService,
    ItemResult,
    parse,
)

# Re-exported: the buffer's other modules name the write path's types through this module alone.
__all__ = [
    "Answer",
    "BodyItem",
    "BodyRejected",
    "DatabaseUnavailable",
    "Delivery",
    "DeliveryKeyReused",
    "IngestService",
    "ItemResult",
]

DOOR = "jetstream"
# The ledger's request id of a buffered request: also its Nats-Msg-Id, its delivery key and the
# front of its receipt.
REQUEST_ID_PREFIX = "js-"
_REQUEST_ID = re.compile(r"js-[0-9a-f]{32}")
MSG_ID = "Nats-Msg-Id"
CONTENT_TYPE = "Ingest-Content-Type"
CONTENT_ENCODING = "Ingest-Content-Encoding"
REMOTE_ADDR = "Ingest-Remote-Addr"
# When the API accepted the request (epoch seconds). Not used yet: the write path decides with its
# own clock (see the README's "Buffered ingest" for what that changes for an old backlog).
RECEIVED_AT = "Ingest-Received-At"


class MalformedMessage(Exception):
    """A message on the requests' subjects that no API published (no request id)."""


@dataclass(frozen=True, slots=True)
class BufferedRequest:
    request_id: str
    delivery: Delivery
    items: list[BodyItem]


def is_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def request_id_for(idempotency_key: str | None) -> str:
    """A buffered request's id. With an Idempotency-Key it is derived from the key, so a retry is
    published with the same Nats-Msg-Id (the stream drops it within its duplicate window) and
    stored under the same delivery key (the writer answers it from the ledger, writing nothing)."""
    if idempotency_key is None:
        return REQUEST_ID_PREFIX + new_request_id()
    return REQUEST_ID_PREFIX + hashlib.sha256(b"idempotency-key:" + idempotency_key.encode()).hexdigest()[:32]


def message_headers(request_id: str, delivery: Delivery, received_at: float) -> dict[str, str]:
    headers = {MSG_ID: request_id, RECEIVED_AT: f"{received_at:.6f}"}
    for name, value in (
        (CONTENT_TYPE, delivery.content_type),
        (CONTENT_ENCODING, delivery.content_encoding),
        (REMOTE_ADDR, delivery.remote_addr),
    ):
        if value:
            headers[name] = value
    return headers


def partition_key(items: list[BodyItem]) -> str:
    """A body's first device id (or serial): one device's requests share a subject."""
    event = items[0].parsed if items else None
    if isinstance(event, dict):
        key = event.get("device_id", event.get("serial"))
        if isinstance(key, int | str):
            return str(key)
    return ""


def decode(headers: Mapping[str, str] | None, data: bytes, settings: Settings) -> BufferedRequest:
    """The items and delivery the HTTP route made of the same body. Raises BodyRejected when this
    writer's limits refuse what the API accepted (their settings differ), MalformedMessage when the
    message has no request id."""
    headers = headers or {}
    request_id = headers.get(MSG_ID, "")
    if not is_request_id(request_id):
        raise MalformedMessage(f"no request id of this API in {MSG_ID}")
    content_type, encoding = headers.get(CONTENT_TYPE), headers.get(CONTENT_ENCODING)
    parsed = parse(
        data, content_type, encoding, max_inflated_bytes=settings.max_inflated_bytes, max_items=settings.max_batch_items
    )
    delivery = Delivery(
        door=DOOR,
        request_id=request_id,
        content_type=content_type,
        content_encoding=encoding,
        remote_addr=headers.get(REMOTE_ADDR),
        key=request_id,
    )
    return BufferedRequest(request_id, delivery, parsed.items)


async def start_service(pool: AsyncConnectionPool, settings: Settings) -> IngestService:
    """The write path a writer process stores with, started as the API starts its own."""
    service = IngestService(pool, settings)
    await service.start()
    return service


async def store(service: IngestService, request: BufferedRequest) -> Answer:
    """Through the same service as POST /ingest: one group commit, answered after it committed.
    `replayed`: an earlier delivery stored it, nothing was written now."""
    return await service.ingest(request.items, request.delivery)


async def recorded(service: IngestService, request_id: str) -> list[ItemResult] | None:
    """The stored results of a buffered request, None while it is not stored (within
    DELIVERY_KEY_WINDOW_SECONDS of its first store). Raises DatabaseUnavailable."""
    answer = await service.recorded(DOOR, request_id)
    return None if answer is None else answer.results
