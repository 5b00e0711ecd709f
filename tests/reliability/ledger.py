"""Reconcile what pipe_to_api was told with what the database holds."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import psycopg

from tests.utils.ledger import assert_one_outcome_per_raw_row

ACCEPTED = ("ok", "duplicate", "provisioned")


def _content(payload: Any, body_text: str | None, body_bytes: bytes | None) -> str:
    """A raw row's body in a comparable form: canonical JSON when it parses, else its text."""
    if payload is not None:
        return json.dumps(payload, sort_keys=True)
    text = body_text if body_text is not None else bytes(body_bytes or b"").decode("utf-8", "replace")
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError:
        return text


def line_content(line: bytes) -> str:
    return _content(None, line.decode("utf-8", "replace"), None)


def reconcile(conn: psycopg.Connection, lines: list[bytes], results: dict[int, dict[str, Any]]) -> dict[str, int]:
    """Every acknowledged line is in the ledger as sent, with one outcome; facts are the distinct valid
    events, once each. Returns the counts for the report."""
    assert sorted(results) == list(range(1, len(lines) + 1)), "pipe_to_api did not answer every line"
    statuses = Counter(r["status"] for r in results.values())
    assert statuses["undelivered"] == 0 and statuses["error"] == 0, statuses

    raw = {
        row[0]: _content(row[1], row[2], row[3])
        for row in conn.execute("select id, payload, body_text, body_bytes from ingest.raw_record")
    }
    facts = dict(conn.execute("select id, raw_record_id from ingest.processed_record").fetchall())
    contents = [line_content(line) for line in lines]
    acked: set[int] = set()
    valid_events: set[str] = set()
    for number, result in results.items():
        raw_id = result["raw_id"]
        assert raw_id in raw, f"line {number} acknowledged as raw {raw_id}, which is not in the ledger"
        assert raw[raw_id] == contents[number - 1], f"raw {raw_id} does not hold line {number}"
        acked.add(raw_id)
        if result["status"] == "ok":
            assert facts.get(result["processed_id"]) == raw_id
            valid_events.add(contents[number - 1])
        elif result["status"] == "duplicate":
            # a retry of a batch whose first delivery committed but whose answer was lost
            fact_raw = facts.get(result["processed_id"])
            assert fact_raw is not None and raw[fact_raw] == contents[number - 1]
            valid_events.add(contents[number - 1])
    assert len(acked) == len(lines), "two lines were acknowledged with the same raw id"

    total_raw = assert_one_outcome_per_raw_row(conn).raw_rows
    distinct = conn.execute(
        """select count(*), count(distinct (device_id, record_type_id, record_time, value)),
                  count(distinct raw_record_id) from ingest.processed_record"""
    ).fetchone()
    assert distinct is not None and distinct[0] == distinct[1] == distinct[2], f"duplicate facts: {distinct}"
    assert len(facts) == len(valid_events), "facts are not exactly the distinct valid events sent"
    line_set = set(contents)
    unacked = [raw_id for raw_id in raw if raw_id not in acked]
    assert all(raw[raw_id] in line_set for raw_id in unacked), "a raw row holds something never sent"
    assert all(raw[raw_id] in valid_events for raw_id in facts.values()), "a fact nobody sent"
    return {
        "lines": len(lines),
        "accepted": sum(statuses[s] for s in ACCEPTED),
        "rejected": statuses["invalid"] + statuses["unauthorized"],
        "duplicates_after_retry": statuses["duplicate"],
        "raw_rows": total_raw,
        "raw_rows_from_lost_acks": len(unacked),
        "facts": len(facts),
        "lost": 0,
    }
