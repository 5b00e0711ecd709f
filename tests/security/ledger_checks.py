"""Checks shared by the hostile-input tests: the answer's shape, and what the ledger holds for it."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg
from pydantic import TypeAdapter

from ingest_service.api.schemas import ItemResultModel, RefusedBody
from tests.utils.ledger import outcomes_of

# The outcome kind (tests/utils/ledger.py) the ledger must hold for each answered status.
OUTCOME_KIND = {
    "ok": "fact",
    "duplicate": "duplicate",
    "provisioned": "startup",
    "invalid": "error",
    "unauthorized": "error",
    "rate_limited": "error",
    "error": "error",
}

_results = TypeAdapter(ItemResultModel | list[ItemResultModel])


def _numbers_as_decimals(value: Any) -> Any:
    """jsonb keeps numbers as `numeric` (1e308 comes back as 1000...0, -0.0 as 0): compare numbers by value."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return "num:" + str((Decimal(repr(value)) + 0).normalize())
    if isinstance(value, list):
        return [_numbers_as_decimals(v) for v in value]
    return {k: _numbers_as_decimals(v) for k, v in value.items()}


def canonical_value(value: Any) -> str:
    try:
        return "json:" + json.dumps(_numbers_as_decimals(value), sort_keys=True, ensure_ascii=True)
    except (ValueError, RecursionError):
        return "unserializable"


def stored_canonical(payload: Any, body_text: str | None, body_bytes: bytes | None) -> str:
    if payload is not None or (body_text is None and body_bytes is None):
        return canonical_value(payload)
    if body_text is not None:
        try:
            return canonical_value(json.loads(body_text))
        except (ValueError, RecursionError):
            return "bytes:" + body_text.encode("utf-8", "surrogatepass").hex()
    data = bytes(body_bytes or b"")
    try:
        return canonical_value(json.loads(data.decode("utf-8")))
    except (ValueError, RecursionError):
        return "bytes:" + data.hex()


def sent_canonical(item: Any) -> str:
    """An item as sent: raw bytes (a body or an NDJSON line) or a decoded JSON value (an array element)."""
    if isinstance(item, bytes):
        return stored_canonical(None, None, item)
    return canonical_value(item)


def check_answer_shape(status_code: int, body: Any) -> None:
    """The answer matches the OpenAPI contract (ItemResultModel, a list of them, or RefusedBody)."""
    assert status_code < 500 or status_code == 503, f"server error {status_code}: {body}"
    if isinstance(body, dict) and body.get("stored") is False:
        RefusedBody.model_validate(body)
    else:
        _results.validate_python(body)


def check_stored(conn: psycopg.Connection, results: list[dict[str, Any]], sent: list[Any] | None) -> None:
    """Each result's raw row exists, has exactly the outcome the answer reported, and holds what was sent."""
    raw_ids = [r["raw_id"] for r in results]
    assert all(isinstance(i, int) for i in raw_ids), results
    rows = outcomes_of(conn, raw_ids)
    assert len(rows) == len(set(raw_ids)) == len(raw_ids), "an acknowledged item is missing from the ledger"
    for index, result in enumerate(results):
        _, payload, text, data, kinds, fact, reason = rows[result["raw_id"]]
        assert kinds == [OUTCOME_KIND[result["status"]]], f"raw {result['raw_id']} has outcomes {kinds}: {result}"
        if reason is not None:
            assert reason == result["reason"]
        if fact is not None:
            assert fact == result["processed_id"]
        if sent is not None:
            assert stored_canonical(payload, text, data) == sent_canonical(sent[index]), (
                f"item {index}: the ledger does not hold what was sent"
            )
