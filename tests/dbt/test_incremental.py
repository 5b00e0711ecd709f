"""The incremental marts give the answers of a full build.

Data arrives in steps, each received on a later UTC day, with late facts for an old day, errors,
duplicates and side switches; after each step an incremental `dbt build` (with the hourly run's
scoped tests: DBT_TEST_SINCE) runs on the database, and a copy of the database (same data) gets a
`dbt run --full-refresh`: every table and view of the `analytics` schema must hold the same rows in
both. The last step also replays an old error into a fact without a new receipt: only
`reprocess_days` (the received day) brings ingest_parse and the error rates up to date.

The rollup's lookback is 0 here, so that each incremental run reads only what is new (with the
default 60 minutes, every step here would fall inside the lookback and be re-read whole).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from ingest_service.core.database import DatabaseTarget
from tests.dbt.helpers import ensure_legacy_device, run_dbt
from tests.utils.db import drop_database

pytestmark = [pytest.mark.db, pytest.mark.slow]

TICKS, MM, BATTERY, HEIGHT = 1, 2, 3, 4
NOW = datetime.now(UTC).replace(microsecond=0)
BASE_VARS: dict[str, Any] = {"rollup_lookback_minutes": 0, "metrics_as_of": NOW.isoformat()}
# Built per invocation, not from the data.
SKIPPED = {"analytics_build"}


def _received(step: int) -> datetime:
    """Step k is received on its own UTC day: 3, 2 and 1 days before today, at noon."""
    day = NOW.replace(hour=12, minute=0, second=0) - timedelta(days=3 - step)
    return day


def _raw(conn: psycopg.Connection, at: datetime, payload: dict, n: int) -> int:
    row = conn.execute(
        "insert into ingest.raw_record (received_at, request_id, batch_index, content_type, payload) "
        "values (%s, %s, %s, 'application/json', %s) returning id",
        (at, f"step-{at:%Y%m%d}", n, Jsonb(payload)),
    ).fetchone()
    assert row
    return int(row[0])


def _fact(conn: psycopg.Connection, at: datetime, device: int, type_id: int, ts: datetime, value: float, n: int) -> int:
    ensure_legacy_device(conn, device)
    raw = _raw(conn, at, {"device_id": device, "record_type_id": type_id, "value": value}, n)
    row = conn.execute(
        "insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value, "
        "ingested_at) values (%s, %s, %s, %s, %s, %s) returning id",
        (raw, device, type_id, ts, value, at + timedelta(seconds=1)),
    ).fetchone()
    assert row
    return int(row[0])


def _error(conn: psycopg.Connection, at: datetime, n: int) -> int:
    raw = _raw(conn, at, {"device_id": 1, "event_type": "platform_extension_ticks", "value": "x"}, n)
    conn.execute(
        "insert into ingest.ingest_error (raw_record_id, reason, detail, event_type, device_id, first_seen_at, "
        "last_seen_at) values (%s, 'wrong_type', 'test', 'platform_extension_ticks', 1, %s, %s)",
        (raw, at, at),
    )
    return raw


def add_step(target: DatabaseTarget, step: int) -> None:
    """One step's arrivals: two hours of readings of six devices (two on ticks, two on mm, two
    moving from ticks to mm at step 1), battery and height, errors, duplicates, and from step 1 on
    late facts observed on step 0's day."""
    rng = random.Random(step)
    at = _received(step)
    n = 0
    with psycopg.connect(target.url) as conn:
        facts = []
        for device in range(1, 7):
            on_mm = device in (3, 4) or (device in (5, 6) and step >= 1)
            for i in range(12):
                ts = at - timedelta(hours=2) + timedelta(minutes=10 * i, seconds=device)
                if on_mm:
                    value = rng.choice([-1, 1]) * rng.randint(0, 120)
                    facts.append(_fact(conn, at, device, MM, ts, value, n))
                else:
                    facts.append(_fact(conn, at, device, TICKS, ts, rng.randint(0, 3000), n + 1))
                if i % 4 == 0:
                    _fact(conn, at, device, BATTERY, ts + timedelta(seconds=1), rng.randint(10, 100), n + 2)
                    _fact(conn, at, device, HEIGHT, ts + timedelta(seconds=2), rng.randint(0, 200), n + 3)
                n += 4
        if step >= 1:
            old = _received(0) - timedelta(hours=1)
            for device in (3, 5):
                _fact(conn, at, device, MM, old + timedelta(minutes=device), rng.randint(-100, 100), n)
                n += 1
        for _ in range(3):
            _error(conn, at, n)
            n += 1
        for fact in facts[:2]:
            raw = _raw(conn, at, {"duplicate_of": fact}, n)
            conn.execute(
                "insert into ingest.raw_duplicate (raw_record_id, processed_record_id) values (%s, %s)", (raw, fact)
            )
            n += 1
        conn.commit()


def replay_an_old_error(target: DatabaseTarget) -> str:
    """A replay turns one error received on step 0's day into a fact (ingested now): the raw row's
    outcome changes without a new receipt. Returns that received day."""
    with psycopg.connect(target.url) as conn:
        row = conn.execute(
            "select e.raw_record_id, r.received_at from ingest.ingest_error e "
            "join ingest.raw_record r on r.id = e.raw_record_id order by r.received_at, r.id limit 1"
        ).fetchone()
        assert row
        raw_id, received_at = row
        conn.execute("delete from ingest.ingest_error where raw_record_id = %s", (raw_id,))
        conn.execute(
            "insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value, "
            "ingested_at) values (%s, 1, %s, %s, 100, %s)",
            (raw_id, TICKS, received_at, _received(2) + timedelta(minutes=5)),
        )
        conn.commit()
    return f"{received_at.astimezone(UTC).date()}"


def _normal(value: Any) -> Any:
    if isinstance(value, float | Decimal):
        return round(float(value), 6)
    return value


def analytics_rows(target: DatabaseTarget) -> dict[str, list[tuple]]:
    """Every relation of the analytics schema (the marts), its rows sorted."""
    with psycopg.connect(target.url) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "select table_name from information_schema.tables where table_schema = 'analytics' order by 1"
            )
            if name not in SKIPPED
        ]
        rows = {}
        for name in names:
            fetched = conn.execute(sql.SQL("select * from analytics.{}").format(sql.Identifier(name))).fetchall()
            rows[name] = sorted((tuple(_normal(v) for v in row) for row in fetched), key=repr)
    return rows


def _watermark(target: DatabaseTarget) -> str | None:
    with psycopg.connect(target.url) as conn:
        if conn.execute("select to_regclass('analytics.fct_readings_hourly')").fetchone() == (None,):
            return None
        row = conn.execute("select max(last_ingested_at) from analytics.fct_readings_hourly").fetchone()
    return row[0].isoformat() if row and row[0] else None


@pytest.fixture(scope="module")
def dbt_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("dbt_incremental"), tmp_path_factory.mktemp("dbt_full")


@pytest.fixture
def full_build_of_a_copy(
    module_db: DatabaseTarget, pg_server: DatabaseTarget, dbt_dirs: tuple[Path, Path]
) -> Iterator[Any]:
    """A function: copy the database (same data, same marts) and rebuild the copy with --full-refresh."""
    copies: list[str] = []

    def build() -> dict[str, list[tuple]]:
        name = f"{module_db.parts['dbname']}_full{len(copies)}"
        copies.append(name)
        with psycopg.connect(pg_server.url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            admin.execute(
                sql.SQL("create database {} template {}").format(
                    sql.Identifier(name), sql.Identifier(module_db.parts["dbname"])
                )
            )
        copy = pg_server.with_database(name)
        run_dbt(copy, ["run", "--full-refresh"], dbt_dirs[1], vars=BASE_VARS)
        return analytics_rows(copy)

    yield build
    for name in copies:
        drop_database(pg_server, name)


def _incremental_build(target: DatabaseTarget, dbt_dir: Path, **extra: Any) -> None:
    # The hourly run's tests: over the window since the rollup's watermark before the build.
    window = {"DBT_TEST_SINCE": _watermark(target) or ""}
    args = ["build", "--exclude-resource-type", "unit_test"]
    result = run_dbt(target, args, dbt_dir, vars={**BASE_VARS, **extra}, check=False, extra_env=window)
    assert result.returncode == 0, result.stdout[-6000:]


def test_marts_built_incrementally_over_steps_equal_a_full_refresh(
    module_db: DatabaseTarget, dbt_dirs: tuple[Path, Path], full_build_of_a_copy
) -> None:
    add_step(module_db, 0)
    _incremental_build(module_db, dbt_dirs[0])  # the first build: nothing to be incremental over

    add_step(module_db, 1)
    _incremental_build(module_db, dbt_dirs[0])
    incremental = analytics_rows(module_db)
    assert incremental == full_build_of_a_copy()
    assert len(incremental["fct_ingest_error_rate_daily"]) == 2  # two received days, one reason each

    add_step(module_db, 2)
    replayed_day = replay_an_old_error(module_db)
    _incremental_build(module_db, dbt_dirs[0], reprocess_days=[replayed_day])
    incremental = analytics_rows(module_db)
    full = full_build_of_a_copy()
    for name in full:
        assert incremental[name] == full[name], name
    assert incremental == full
