"""The HTTP door's answers: the write path's results as HTTP responses.

A single event gets its result with the HTTP status of its item's status; a batch (an array or
NDJSON) gets the list of results with 200. A request refused as a whole (nothing stored) gets
`{"status": "refused" | "error", "reason", "detail", "stored": false}` with the status of its reason.
"""

from __future__ import annotations

import math

import orjson
from fastapi import Response

from ingest_service.core.config import Settings
from ingest_service.ingest import Answer

# HTTP status of a single-item request, by item status.
SINGLE_ITEM_HTTP_STATUS = {
    "ok": 200,
    "duplicate": 200,
    "provisioned": 200,
    "invalid": 422,
    "unauthorized": 401,
    "rate_limited": 429,
    "error": 500,
}

# HTTP status of a request refused as a whole, by reason; any other refusal is a 400.
REFUSED_HTTP_STATUS = {
    "body_too_large": 413,
    "inflated_too_large": 413,
    "too_many_items": 413,
    "too_many_gzip_members": 413,
    "unsupported_encoding": 415,
    "invalid_gzip": 400,
    "client_disconnected": 400,
    "invalid_idempotency_key": 400,
    "idempotency_key_reused": 422,
    "database_unavailable": 503,
    "buffer_unavailable": 503,  # buffered mode: NATS or the stream did not take it
    "buffer_full": 503,
}

# Set on the answer to a repeated Idempotency-Key: the stored results of its first delivery.
REPLAYED_HEADER = "Idempotent-Replayed"


def refused(reason: str, detail: str, headers: dict[str, str]) -> Response:
    status_code = REFUSED_HTTP_STATUS.get(reason, 400)
    body = {
        "raw_id": None,
        "processed_id": None,
        "status": "refused" if status_code < 500 else "error",
        "reason": reason,
        "detail": detail,
        "stored": False,
    }
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json", headers=headers)


def answered(answer: Answer, is_batch: bool, settings: Settings, headers: dict[str, str]) -> Response:
    if answer.replayed:
        headers[REPLAYED_HEADER] = "true"
    if is_batch:
        content = orjson.dumps([r.as_dict() for r in answer.results])
        return Response(content, media_type="application/json", headers=headers)
    result = answer.results[0]
    if result.status == "rate_limited":
        # whole seconds, rounded up: a sub-second window must not tell the client "0"
        headers["Retry-After"] = str(max(1, math.ceil(settings.failed_startup_window_seconds)))
    return Response(
        orjson.dumps(result.as_dict()),
        status_code=SINGLE_ITEM_HTTP_STATUS[result.status],
        media_type="application/json",
        headers=headers,
    )
