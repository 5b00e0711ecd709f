"""What a receipt says: stored (with the final per-item results, the write path's record of the
request's delivery key), accepted (still in the stream), dead-lettered, or unknown."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import nats.errors
import nats.js.errors

from ingest_service.buffer import door
from ingest_service.buffer.publisher import BufferPublisher, BufferRefused, parse_receipt

log = logging.getLogger(__name__)
# The dead-letter message's headers that say why (set by the writer).
DEAD_REASON = "Ingest-Dead-Reason"
DEAD_DETAIL = "Ingest-Dead-Detail"


class ReceiptsUnavailable(Exception):
    """The database could not be read: the receipt's state is unknown for now."""


@dataclass(frozen=True, slots=True)
class ReceiptState:
    status: Literal["stored", "accepted", "dead_lettered", "unknown"]
    results: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    detail: str | None = None


async def _stored(service: door.IngestService, request_id: str) -> list[dict[str, Any]] | None:
    try:
        results = await door.recorded(service, request_id)
    except door.DatabaseUnavailable as exc:
        log.warning("reading a receipt failed: %s", exc)
        raise ReceiptsUnavailable(str(exc)) from exc
    return [r.as_dict() for r in results] if results is not None else None


async def receipt_state(receipt: str, service: door.IngestService, buffer: BufferPublisher | None) -> ReceiptState:
    """Raises ReceiptsUnavailable (database) or BufferRefused (NATS) when the answer cannot be known."""
    parsed = parse_receipt(receipt)
    if parsed is None:
        return ReceiptState("unknown", detail="not a receipt this API issues")
    request_id, seq = parsed
    results = await _stored(service, request_id)
    if results is not None:
        return ReceiptState("stored", results)
    if buffer is None:  # direct mode: only the ledger can tell
        return ReceiptState("unknown", detail="no such request in the ledger")
    js = buffer.jetstream()
    names = buffer.names
    try:
        try:
            msg = await js.get_msg(names.stream, seq)
            if (msg.headers or {}).get(door.MSG_ID) == request_id:
                return ReceiptState("accepted")
        except nats.js.errors.NotFoundError:
            pass
        try:
            dead = await js.get_last_msg(names.dead_stream, names.dead_subject(request_id))
            headers = dead.headers or {}
            return ReceiptState("dead_lettered", reason=headers.get(DEAD_REASON), detail=headers.get(DEAD_DETAIL))
        except nats.js.errors.NotFoundError:
            pass
    except (nats.errors.Error, TimeoutError) as exc:
        raise BufferRefused("buffer_unavailable", "the buffer (NATS) did not answer; retry later") from exc
    # A writer may have stored the request, and the stream dropped it, between the looks above.
    results = await _stored(service, request_id)
    if results is not None:
        return ReceiptState("stored", results)
    return ReceiptState("unknown", detail="no such request in the ledger or the buffer")
