"""The JetStream door's every call into the write path, in one module.

A buffered request travels as one JetStream message: the body as the client sent it (still gzip
when it came gzip) and its request context in headers. A writer turns the message back into the
items and context the HTTP route would have made (`decode`), stores them through the same service
(`store`), and reads what a request already has in the ledger (`stored_results`), for receipts and
to skip a redelivered message that is already stored.

Until the write path takes delivery keys, a redelivered message is found by that look-up before the
write, and a unique index on the buffered rows' (request id, batch index) (migration 0004) refuses
the second write of a message two writers hold at once; the writer then retries and finds it. With
delivery keys the write stage itself returns a repeated key's stored results, and both go
(docs/scaling.md, "Redeliveries").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool

from ingest_service.core.config import Settings
from ingest_service.ingest.body import BodyItem, BodyRejected, inflate, split_items
from ingest_service.ingest.results import ItemResult, RequestMeta
from ingest_service.ingest.service import DatabaseUnavailable, IngestService

# Re-exported: the buffer's other modules name the write path's types through this module alone.
__all__ = ["BodyItem", "BodyRejected", "DatabaseUnavailable", "IngestService", "ItemResult", "RequestMeta"]

# The ledger's request id of a buffered request: also its Nats-Msg-Id and the front of its receipt.
# Only such ids are looked up (the partial index of migration 0004 covers them alone).
REQUEST_ID_PREFIX = "js-"
_REQUEST_ID = re.compile(r"js-[0-9a-f]{32}")
MSG_ID = "Nats-Msg-Id"
CONTENT_TYPE = "Ingest-Content-Type"
CONTENT_ENCODING = "Ingest-Content-Encoding"
REMOTE_ADDR = "Ingest-Remote-Addr"
# When the API accepted the request (epoch seconds). Not used yet: the write path decides with its
# own clock (see the README's "Buffered ingest" for what that changes for an old backlog).
RECEIVED_AT = "Ingest-Received-At"

# ingest_error keeps an item's reason, not its status: the status the API answers each reason with
# (any other reason is `invalid`). tests/buffer/test_door.py holds this to the write path's answers.
STATUS_OF_REASON = {
    "invalid_token": "unauthorized",
    "stale_startup": "unauthorized",
    "too_many_failed_startups": "rate_limited",
    "internal_error": "error",
}


class MalformedMessage(Exception):
    """A message on the requests' subjects that no API published (no request id)."""


@dataclass(frozen=True, slots=True)
class BufferedRequest:
    request_id: str
    meta: RequestMeta
    items: list[BodyItem]


def is_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def message_headers(request_id: str, meta: RequestMeta, received_at: float) -> dict[str, str]:
    headers = {MSG_ID: request_id, RECEIVED_AT: f"{received_at:.6f}"}
    for name, value in ((CONTENT_TYPE, meta.content_type), (CONTENT_ENCODING, meta.content_encoding)):
        if value:
            headers[name] = value
    if meta.remote_addr:
        headers[REMOTE_ADDR] = meta.remote_addr
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
    """The items and context the HTTP route made of the same body. Raises BodyRejected when this
    writer's limits refuse what the API accepted (their settings differ), MalformedMessage when the
    message has no request id."""
    headers = headers or {}
    request_id = headers.get(MSG_ID, "")
    if not is_request_id(request_id):
        raise MalformedMessage(f"no request id of this API in {MSG_ID}")
    content_type, encoding = headers.get(CONTENT_TYPE), headers.get(CONTENT_ENCODING)
    body = inflate(data, encoding, settings.max_inflated_bytes)
    _, items = split_items(body, content_type, settings.max_batch_items)
    meta = RequestMeta(
        request_id=request_id,
        content_type=content_type,
        content_encoding=encoding,
        remote_addr=headers.get(REMOTE_ADDR),
    )
    return BufferedRequest(request_id, meta, items)


async def start_service(pool: AsyncConnectionPool, settings: Settings) -> IngestService:
    """The write path a writer process stores with, started as the API starts its own."""
    service = IngestService(pool, settings)
    await service.start()
    return service


async def store(service: IngestService, request: BufferedRequest) -> list[ItemResult]:
    """Through the same service as POST /ingest: one group commit, answered after it committed."""
    return await service.ingest(request.items, request.meta)


# One result per raw row of the request, in input order (migration 0004's index: one row per index).
STORED_RESULTS = """
select r.request_id, r.id, p.id, d.processed_record_id, s.device_id, e.reason, e.detail, e.device_id
from ingest.raw_record as r
left join ingest.processed_record as p on p.raw_record_id = r.id
left join ingest.raw_duplicate as d on d.raw_record_id = r.id
left join ingest.device_startup as s on s.raw_record_id = r.id
left join ingest.ingest_error as e on e.raw_record_id = r.id
where r.request_id = any(%s::text[]) and r.request_id like 'js-%%'
order by r.request_id, r.batch_index
"""


def _result(raw_id: int, fact: int | None, repeats: int | None, device: int | None, error: tuple) -> ItemResult:
    reason, detail, error_device = error
    if fact is not None:
        return ItemResult(raw_id, "ok", processed_id=fact)
    if repeats is not None:
        return ItemResult(raw_id, "duplicate", processed_id=repeats)
    if device is not None:
        return ItemResult(raw_id, "provisioned", device_id=device)
    status = STATUS_OF_REASON.get(reason, "invalid")
    return ItemResult(raw_id, status, reason=reason, detail=detail, device_id=error_device)


async def stored_results(conn: psycopg.AsyncConnection, request_ids: list[str]) -> dict[str, list[ItemResult]]:
    """The results of the requests that are in the ledger, by request id. A request's rows commit
    together, so a request is either absent or complete."""
    cur = await conn.execute(STORED_RESULTS, (request_ids,))
    out: dict[str, list[ItemResult]] = {}
    for request_id, raw_id, fact, repeats, device, *error in await cur.fetchall():
        out.setdefault(request_id, []).append(_result(raw_id, fact, repeats, device, tuple(error)))
    return out
