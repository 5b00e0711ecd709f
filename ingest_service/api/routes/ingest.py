"""POST /ingest: telemetry and device_startup events, one object, a JSON array or NDJSON."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect

from ingest_service.api.routes import receipts
from ingest_service.api.schemas import DeviceStartupEvent, ItemResultModel, RefusedBody, TelemetryEvent
from ingest_service.buffer.publisher import BufferRefused
from ingest_service.core.config import Settings
from ingest_service.core.logging import new_request_id, request_id_var
from ingest_service.core.observability import METRICS
from ingest_service.ingest.body import BodyRejected, inflate, split_items
from ingest_service.ingest.results import SINGLE_ITEM_HTTP_STATUS, RequestMeta
from ingest_service.ingest.service import DatabaseUnavailable, IngestService

router = APIRouter(tags=["ingest"])

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
_single = {"model": ItemResultModel}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Stored: one result (single event) or a list of results in input order (batch)",
        "model": ItemResultModel | list[ItemResultModel],
    },
    202: {"description": "Buffered mode: durable in the stream; results at its receipt", "model": receipts.Accepted},
    400: {"description": "The gzip body is corrupt; nothing stored", "model": RefusedBody},
    401: {"description": "device_startup with a bad provision_token; the body is stored", **_single},
    413: {
        "description": "Body, inflated body or item count over the limit; nothing stored",
        "model": RefusedBody,
    },
    415: {"description": "Unsupported Content-Encoding; nothing stored", "model": RefusedBody},
    422: {"description": "Invalid event (or not JSON at all); the body is stored with its reason", **_single},
    429: {"description": "Too many failed startups for this serial; the body is stored", **_single},
    503: {
        "description": "Database unavailable; nothing stored; retry after Retry-After seconds",
        "model": RefusedBody,
    },
}


def _request_id() -> str:
    # Set by RequestIdMiddleware, which also echoes it in the X-Request-ID response header.
    return request_id_var.get() or new_request_id()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyRejected(413, "body_too_large", f"body of {declared} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyRejected(413, "body_too_large", f"body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _refused(status_code: int, reason: str, detail: str, headers: dict[str, str]) -> Response:
    body = {
        "raw_id": None,
        "processed_id": None,
        "status": "refused" if status_code < 500 else "error",
        "reason": reason,
        "detail": detail,
        "stored": False,
    }
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers)


@router.post(
    "/ingest",
    summary="Ingest telemetry and device_startup events",
    responses=RESPONSES,
    openapi_extra={"requestBody": REQUEST_BODY},
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
        response = _refused(exc.status_code, exc.reason, exc.detail, headers)
    except DatabaseUnavailable as exc:
        headers["Retry-After"] = str(settings.retry_after_seconds)
        response = _refused(503, "database_unavailable", f"nothing was stored, retry later: {exc}"[:300], headers)
    except BufferRefused as exc:  # buffered mode: NATS or the stream did not take it
        headers["Retry-After"] = str(settings.retry_after_seconds)
        response = _refused(503, exc.reason, exc.detail, headers)
    except ClientDisconnect:
        response = _refused(400, "client_disconnected", "the client closed the connection mid-body", headers)
    METRICS.count_request(response.status_code)
    METRICS.latency.observe(time.perf_counter() - started)
    return response


async def _ingest(
    request: Request, service: IngestService, settings: Settings, request_id: str, headers: dict[str, str]
) -> Response:
    received = await _read_body(request, settings.max_body_bytes)
    encoding = request.headers.get("content-encoding")
    body = inflate(received, encoding, settings.max_inflated_bytes)
    content_type = request.headers.get("content-type")
    is_batch, items = split_items(body, content_type, settings.max_batch_items)
    meta = RequestMeta(
        request_id=request_id,
        content_type=content_type[:200] if content_type else None,
        content_encoding=encoding[:50] if encoding else None,
        remote_addr=request.client.host if request.client else None,
    )
    if request.app.state.buffer is not None:  # buffered mode: writers store it (api/routes/receipts.py)
        return await receipts.publish(request.app.state.buffer, received, meta, items, headers)
    results = await service.ingest(items, meta)
    if len(results) == 1:
        METRICS.count_item(results[0].status, results[0].reason)
    else:
        for (status, reason), count in Counter((r.status, r.reason) for r in results).items():
            METRICS.count_item(status, reason, count)
    if is_batch:
        return Response(orjson.dumps([r.as_dict() for r in results]), media_type="application/json", headers=headers)
    result = results[0]
    if result.status == "rate_limited":
        # whole seconds, rounded up: a sub-second window must not tell the client "0"
        headers["Retry-After"] = str(max(1, math.ceil(settings.failed_startup_window_seconds)))
    return Response(
        orjson.dumps(result.as_dict()),
        status_code=SINGLE_ITEM_HTTP_STATUS[result.status],
        media_type="application/json",
        headers=headers,
    )


# Referenced so the OpenAPI document carries the event schemas the request body points at.
EVENT_MODELS = (TelemetryEvent, DeviceStartupEvent)
