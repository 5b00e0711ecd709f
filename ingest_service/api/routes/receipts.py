"""Buffered mode's HTTP side: the 202 a POST /ingest gets once the stream holds its body, and
GET /ingest/receipts/{receipt}, which answers `accepted` until a writer stored it, then the final
per-item results (the same shapes as a direct-mode answer)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from ingest_service.api.schemas import ItemResultModel, RefusedBody
from ingest_service.buffer.door import BodyItem, Delivery
from ingest_service.buffer.metrics import state_exposition
from ingest_service.buffer.publisher import BufferPublisher, BufferRefused
from ingest_service.buffer.receipts import ReceiptsUnavailable, receipt_state
from ingest_service.buffer.stream import BufferUnavailable
from ingest_service.core.config import Settings

router = APIRouter(tags=["ingest"])
RECEIPTS_PATH = "/ingest/receipts/"


class Accepted(BaseModel):
    """Buffered mode: the body is durable in the stream; a writer stores it."""

    status: Literal["accepted"] = "accepted"
    receipt: str = Field(description="GET /ingest/receipts/{receipt} for the final results")
    items: int = Field(description="Items the body holds: the results will have as many")


class ReceiptAnswer(BaseModel):
    receipt: str
    status: Literal["accepted", "stored", "dead_lettered"]
    results: list[ItemResultModel] | None = Field(
        default=None, description="stored: one result per item, in input order"
    )
    reason: str | None = Field(default=None, description="dead_lettered: why no writer could store it")
    detail: str | None = None


async def publish(
    buffer: BufferPublisher,
    body: bytes,
    delivery: Delivery,
    items: list[BodyItem],
    headers: dict[str, str],
) -> Response:
    """POST /ingest in buffered mode, once the body's framing and limits are checked. The delivery's
    key (the Idempotency-Key) decides the request id (buffer/door.py, request_id_for)."""
    receipt = await buffer.publish(body, delivery, items)
    headers["Location"] = RECEIPTS_PATH + receipt.receipt
    answer = {"status": "accepted", "receipt": receipt.receipt, "items": receipt.items}
    return Response(orjson.dumps(answer), status_code=202, media_type="application/json", headers=headers)


def _json(body: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers)


def _unavailable(reason: str, detail: str, settings: Settings) -> Response:
    body = {"raw_id": None, "processed_id": None, "status": "error", "reason": reason, "detail": detail}
    return _json({**body, "stored": False}, 503, {"Retry-After": str(settings.retry_after_seconds)})


@router.get(
    RECEIPTS_PATH + "{receipt}",
    summary="The state of a buffered request: accepted, stored (with its results) or dead-lettered",
    response_model=ReceiptAnswer,
    responses={
        404: {"description": "Not a receipt this API issued (or long expired)", "model": RefusedBody},
        503: {"description": "The database or the buffer cannot be read now; retry", "model": RefusedBody},
    },
)
async def get_receipt(receipt: str, request: Request) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    try:
        found = await receipt_state(receipt, state.service, state.buffer)
    except ReceiptsUnavailable:
        return _unavailable("database_unavailable", "the results cannot be read now; retry later", settings)
    except BufferRefused as exc:
        return _unavailable(exc.reason, exc.detail, settings)
    if found.status == "unknown":
        body = {"raw_id": None, "processed_id": None, "status": "refused", "reason": "unknown_receipt"}
        return _json({**body, "detail": found.detail, "stored": False}, 404)
    answer: dict[str, Any] = {"receipt": receipt, "status": found.status}
    if found.status == "stored":
        answer["results"] = found.results
    elif found.status == "dead_lettered":
        answer.update(reason=found.reason, detail=found.detail)
    # accepted: poll again; Retry-After says when it is worth it
    headers = {"Retry-After": str(settings.retry_after_seconds)} if found.status == "accepted" else None
    return _json(answer, headers=headers)


async def buffer_readiness(buffer: BufferPublisher) -> Response:
    """/readyz in buffered mode: JetStream takes requests (the database is the writers' concern:
    while it is down the API keeps accepting, which is what the buffer is for)."""
    try:
        state = await buffer.state()
    except BufferUnavailable as exc:
        return _json({"status": "unready", "detail": f"buffer_unavailable: {exc}"}, 503)
    names = buffer.names
    return _json({"status": "ready", "detail": f"buffer: stream {names.stream}", "buffer": state.as_dict()})


async def buffer_exposition(buffer: BufferPublisher) -> bytes:
    """/metrics in buffered mode: the backlog, as JetStream reports it now."""
    try:
        state = await buffer.state()
    except BufferUnavailable:
        return state_exposition(None)
    return state_exposition(state)
