"""Running dbt against a test database, and writing ingest rows with plain SQL.

`load_via_sql` writes what the ingest API writes for a Scenario (raw row first, then exactly one
outcome), so the dbt models can be tested without the API, and so tests can break an invariant
on purpose (e.g. a raw row with no outcome) in a way the API never would.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ingest_service.core.database import DatabaseTarget, tool_environment
from tests.dbt.events import RECORD_TYPES, STARTUP, Scenario

REPO = Path(__file__).resolve().parents[2]
DBT_PROJECT = REPO / "dbt_project"
DBT = REPO / ".venv" / "bin" / "dbt"


def run_dbt(
    target: DatabaseTarget,
    args: Sequence[str],
    target_path: Path,
    vars: dict[str, Any] | None = None,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`dbt <args>` on the test database, its artefacts under `target_path` (one per test module)."""
    env = tool_environment(target)
    env.update(extra_env or {})
    env["DBT_PROFILES_DIR"] = str(DBT_PROJECT)
    env.pop("DBT_TARGET", None)
    cmd = [
        str(DBT),
        *args,
        "--project-dir",
        str(DBT_PROJECT),
        "--profiles-dir",
        str(DBT_PROJECT),
        "--target-path",
        str(target_path),
        "--log-path",
        str(target_path / "logs"),
    ]
    if vars:
        cmd += ["--vars", json.dumps(vars)]
    result = subprocess.run(cmd, env=env, cwd=DBT_PROJECT, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"dbt {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-6000:]}")
    return result


def iso(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def insert_raw(conn: psycopg.Connection, payload: Any, request_id: str = "sql-loader", index: int = 0) -> int:
    row = conn.execute(
        "insert into ingest.raw_record (request_id, batch_index, content_type, payload) "
        "values (%s, %s, 'application/json', %s) returning id",
        (request_id, index, Jsonb(payload)),
    ).fetchone()
    assert row
    return int(row[0])


def ensure_legacy_device(conn: psycopg.Connection, device_id: int) -> None:
    conn.execute(
        "insert into ingest.device (id, origin) values (%s, 'legacy') on conflict (id) do nothing", (device_id,)
    )


def insert_fact(conn: psycopg.Connection, raw_id: int, device_id: int, event_type: str, ts: float, value: float) -> int:
    ensure_legacy_device(conn, device_id)
    row = conn.execute(
        "insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value) "
        "values (%s, %s, %s, %s, %s) returning id",
        (raw_id, device_id, RECORD_TYPES[event_type][0], iso(ts), value),
    ).fetchone()
    assert row
    return int(row[0])


def load_via_sql(target: DatabaseTarget, scenario: Scenario) -> None:
    """Write the scenario's events and their expected outcomes, one transaction per 100 events."""
    fact_ids: dict[tuple[int, str, float, float], int] = {}
    with psycopg.connect(target.url) as conn:
        for i, (event, outcome) in enumerate(zip(scenario.events, scenario.outcomes, strict=True)):
            raw_id = insert_raw(conn, event, f"sql-{i // 100}", i % 100)
            if outcome.kind == "processed":
                assert outcome.fact
                fact_ids[outcome.fact] = insert_fact(conn, raw_id, *outcome.fact)
            elif outcome.kind == "duplicate":
                assert outcome.fact
                conn.execute(
                    "insert into ingest.raw_duplicate (raw_record_id, processed_record_id) values (%s, %s)",
                    (raw_id, fact_ids[outcome.fact]),
                )
            elif outcome.kind == "provisioned":
                device_id = event.get("device_id")
                if device_id is None:
                    row = conn.execute(
                        "insert into ingest.device (id, serial, firmware, origin, provisioned_at) "
                        "values (nextval('ingest.device_provisioned_id_seq'), %s, %s, 'provisioned', now()) "
                        "returning id",
                        (event["serial"], event.get("firmware")),
                    ).fetchone()
                    assert row
                    device_id = int(row[0])
                else:
                    ensure_legacy_device(conn, device_id)
                conn.execute(
                    "insert into ingest.device_startup (raw_record_id, device_id, serial, firmware, started_at, "
                    "upgraded_legacy) values (%s, %s, %s, %s, %s, %s)",
                    (
                        raw_id,
                        device_id,
                        event["serial"],
                        event.get("firmware"),
                        iso(event["timestamp"]),
                        "device_id" in event,
                    ),
                )
            else:
                event_type = event.get("event_type")
                device = event.get("device_id")
                conn.execute(
                    "insert into ingest.ingest_error (raw_record_id, reason, detail, event_type, device_id) "
                    "values (%s, %s, %s, %s, %s)",
                    (
                        raw_id,
                        outcome.reason,
                        f"test: {outcome.reason}",
                        event_type if isinstance(event_type, str) else None,
                        device if isinstance(device, int) and event_type != STARTUP else None,
                    ),
                )
            if i % 100 == 99:
                conn.commit()
        conn.commit()


def query(target: DatabaseTarget, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(target.url) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


def dbt_env_ok() -> bool:
    return DBT.exists() and os.access(DBT, os.X_OK)
