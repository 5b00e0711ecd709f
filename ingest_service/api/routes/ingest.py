"""POST /ingest: telemetry and device_startup events, one object, a JSON array or NDJSON.

The HTTP door of the write path (`ingest_service.ingest`): it reads the body within its limit,
hands it to the write path with the request's `Idempotency-Key` as its delivery key, and answers
(`ingest_service.api.answers`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from ingest_service.api.answers import answered, refused
from ingest_service.api.routes import receipts
from ingest_service.api.schemas import DeviceStartupEvent, ItemResultModel, RefusedBody, TelemetryEvent
from ingest_service.buffer.publisher import BufferRefused
from ingest_service.core.config import Settings
from ingest_service.core.logging import new_request_id, request_id_var
from ingest_service.core.observability import METRICS
from ingest_service.ingest import (
    BodyRejected,
    DatabaseUnavailable,
    Delivery,
    DeliveryKeyReused,
    IngestService,
    parse,
)

router = APIRouter(tags=["ingest"])
log = logging.getLogger(__name__)
# What a client is told when the database cannot take a request; the database's own text (which may
# name hosts, roles or SQL) goes to the log with the request id, never into the answer.
DATABASE_UNAVAILABLE = "the database is unavailable; nothing was stored, retry after Retry-After seconds"

_event_schema = {
    "oneOf": [
        {"$ref": "#/components/schemas/TelemetryEvent"},
        {"$ref": "#/components/schemas/DeviceStartupEvent"},
    ]
}
REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"oneOf": [_event_schema, {"type": "array", "items": _event_schema, "minItems": 1}]}
        },
        "application/x-ndjson": {"schema": {"type": "string", "description": "One JSON event per line"}},
    },
}
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe: a repeat of the key (within DELIVERY_KEY_WINDOW_SECONDS) is answered with the"
        " stored results of its first delivery and stores nothing again; the same key with another body is"
        " a 422. Up to 255 printable ASCII characters, unique per request (a UUID, say)."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
}
_single = {"model": ItemResultModel}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Stored: one result (single event) or a list of results in input order (batch)",
        "model": ItemResultModel | list[ItemResultModel],
        "headers": {
            "Idempotent-Replayed": {
                "description": "`true`: a repeated Idempotency-Key, answered with the stored results",
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    },
    400: {
        "description": "The gzip body is corrupt, or the Idempotency-Key is not 1-255 printable ASCII characters;"
        " nothing stored",
        "model": RefusedBody,
    },
    202: {"description": "Buffered mode: durable in the stream; results at its receipt", "model": receipts.Accepted},
    401: {"description": "device_startup with a bad provision_token; the body is stored", **_single},
    413: {
        "description": "Body, inflated body or item count over the limit; nothing stored",
        "model": RefusedBody,
    },
    415: {"description": "Unsupported Content-Encoding; nothing stored", "model": RefusedBody},
    422: {
        "description": "Invalid event (or not JSON at all): the body is stored with its reason. Or"
        " idempotency_key_reused: the Idempotency-Key was used for another body, nothing stored",
        "model": ItemResultModel | RefusedBody,
    },
    429: {"description": "Too many failed startups for this serial; the body is stored", **_single},
    503: {
        "description": "Database unavailable; nothing stored; retry after Retry-After seconds",
        "model": RefusedBody,
    },
}


def _request_id() -> str:
    # Set by RequestIdMiddleware, which also echoes it in the X-Request-ID response header.
    return request_id_var.get() or new_request_id()


def _idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key header; "" when it is present but not a usable key."""
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    key = value.strip()
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH or not key.isascii() or not key.isprintable():
        return ""
    return key


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyRejected("body_too_large", f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyRejected("body_too_large", f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/ingest",
    summary="Ingest telemetry and device_startup events",
    responses=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY, "parameters": [IDEMPOTENCY_KEY]},
)
async def ingest(request: Request) -> Response:
    """Store each event in the ledger, then as a fact, a provisioned device or an error."""
    # The hottest route reads app state directly: FastAPI's dependency solving costs more per
    # request than this route's own work for a single event (docs/performance.md).
    state = request.app.state
    service: IngestService = state.service
    settings: Settings = state.settings
    started = time.perf_counter()
    request_id = _request_id()
    headers: dict[str, str] = {}
    try:
        response = await _ingest(request, service, settings, request_id, headers)
    except BodyRejected as exc:
        response = refused(exc.reason, exc.detail, headers)
    except DeliveryKeyReused as exc:
        response = refused("idempotency_key_reused", str(exc), headers)
    except DatabaseUnavailable as exc:
        headers["Retry-After"] = str(settings.retry_after_seconds)
        log.warning("database unavailable: answered 503", extra={"fields": {"error": str(exc)[:1000]}})
        response = refused("database_unavailable", DATABASE_UNAVAILABLE, headers)
    except BufferRefused as exc:  # buffered mode: NATS or the stream did not take it
        headers["Retry-After"] = str(settings.retry_after_seconds)
        response = refused(exc.reason, exc.detail, headers)
    except ClientDisconnect:
        response = refused("client_disconnected", "the client closed the connection mid-body", headers)
    METRICS.count_request(response.status_code)
    METRICS.latency.observe(time.perf_counter() - started)
    return response


async def _ingest(
    request: Request, service: IngestService, settings: Settings, request_id: str, headers: dict[str, str]
) -> Response:
    key = _idempotency_key(request)
    if key == "":
        return refused("invalid_idempotency_key", "Idempotency-Key must be 1-255 printable ASCII characters", headers)
    body = await _read_body(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type")
    encoding = request.headers.get("content-encoding")
    parsed = parse(
        body,
        content_type,
        encoding,
        max_inflated_bytes=settings.max_inflated_bytes,
        max_items=settings.max_batch_items,
    )
    delivery = Delivery(
        door="http",
        request_id=request_id,
        content_type=content_type[:200] if content_type else None,
        content_encoding=encoding[:50] if encoding else None,
        remote_addr=request.client.host if request.client else None,
        key=key,
    )
    if request.app.state.buffer is not None:  # buffered mode: writers store it (api/routes/receipts.py)
        return await receipts.publish(request.app.state.buffer, body, delivery, parsed.items, headers)
    answer = await service.ingest(parsed.items, delivery)
    if not answer.replayed:  # a replay stored nothing: its items were counted at their first delivery
        results = answer.results
        if len(results) == 1:
            METRICS.count_item(results[0].status, results[0].reason)
        else:
            for (status, reason), count in Counter((r.status, r.reason) for r in results).items():
                METRICS.count_item(status, reason, count)
    return answered(answer, parsed.is_batch, settings, headers)


# Referenced so the OpenAPI document carries the event schemas the request body points at.
EVENT_MODELS = (TelemetryEvent, DeviceStartupEvent)
