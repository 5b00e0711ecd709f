"""Time partitions (migration 0006): idempotency across partitions, immutability on every partition,
partitions created ahead, the default partition as a visible safety net, and the upgrade of an
unpartitioned database that has data."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ingest_service.core import migrate
from ingest_service.core.database import DatabaseTarget
from ingest_service.lifecycle import partitions
from tests.utils.db import drop_database
from tests.utils.events import telemetry
from tests.utils.write_path import request, writer_for

DAY = 86400.0
TABLES = ("raw_record", "processed_record", "raw_duplicate", "device_startup", "ingest_error")
KEYS = {
    "raw_record": "id",
    "processed_record": "id",
    "raw_duplicate": "raw_record_id",
    "device_startup": "raw_record_id",
    "ingest_error": "raw_record_id",
}


async def _store(url: str, events: list[dict[str, Any]], request_id: str = "req") -> list[Any]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        writer = await writer_for(conn)
        (answer,) = await writer.store(conn, [request(events, request_id)])
        assert not isinstance(answer, Exception)
        return answer.results


def store(url: str, events: list[dict[str, Any]], request_id: str = "req") -> list[Any]:
    return asyncio.run(_store(url, events, request_id))


def snapshot(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {t: conn.execute(f"select * from ingest.{t} order by {KEYS[t]}").fetchall() for t in TABLES}


def partition_of(conn: psycopg.Connection, table: str, where: str) -> str:
    row = conn.execute(f"select tableoid::regclass::text from ingest.{table} where {where}").fetchone()
    assert row is not None
    return str(row[0])


def test_every_ingest_table_is_partitioned_by_day(db: psycopg.Connection) -> None:
    assert partitions.partitioned_tables(db) == {
        "device_startup": "processed_at",
        "ingest_error": "first_seen_at",
        "processed_record": "record_time",
        "raw_duplicate": "detected_at",
        "raw_record": "received_at",
    }
    today = partitions.today()
    names = {p.name for p in partitions.list_partitions(db)}
    for table in TABLES:
        assert f"{table}_default" in names
        for ahead in range(partitions.DAYS_AHEAD):
            assert f"{table}_p{(today + timedelta(days=ahead)):%Y%m%d}" in names


def test_migrate_creates_the_window_and_ensure_only_what_is_missing(
    fresh_db: DatabaseTarget, db: psycopg.Connection
) -> None:
    # Migrated now, not only when the run's template was (a run can cross midnight UTC in between).
    migrate.upgrade(fresh_db)
    first, last = partitions.window(None)
    names = {p.name for p in partitions.list_partitions(db)}
    day = first
    while day <= last:
        assert {f"{t}_p{day:%Y%m%d}" for t in TABLES} <= names
        day += timedelta(days=1)
    assert partitions.ensure_ahead(db, retention_days=None) == []
    created = partitions.ensure(db, first - timedelta(days=1), last + timedelta(days=1))
    assert sorted(created) == sorted(
        f"{t}_p{d:%Y%m%d}" for t in TABLES for d in (first - timedelta(days=1), last + timedelta(days=1))
    )
    # Never a day the archive would drop again.
    assert partitions.window(3)[0] == partitions.today() - timedelta(days=3)


def test_replay_of_last_months_event_is_a_duplicate_across_partitions(
    fresh_db: DatabaseTarget, db: psycopg.Connection
) -> None:
    """uq_processed_event includes the partition key (record_time): the replay meets the original."""
    old = time.time() - 29 * DAY
    old_day = datetime.fromtimestamp(old, UTC).date()
    partitions.ensure(db, old_day, old_day)
    event = telemetry(device_id=7, value=42, timestamp=old)
    (first,) = store(fresh_db.url, [event], "first")
    assert first.status == "ok"
    # A month later, the same event again, alone and inside a batch of today's events.
    (again,) = store(fresh_db.url, [event], "replay")
    batch = store(fresh_db.url, [telemetry(device_id=7, value=1), event, event], "batch")
    assert again.status == "duplicate" and again.processed_id == first.processed_id
    assert [r.status for r in batch] == ["ok", "duplicate", "duplicate"]
    assert batch[1].processed_id == first.processed_id
    today = partitions.today()
    assert partition_of(db, "processed_record", f"id = {first.processed_id}") == (
        f"ingest.processed_record_p{old_day:%Y%m%d}"
    )
    assert partition_of(db, "raw_duplicate", f"raw_record_id = {again.raw_id}") == (
        f"ingest.raw_duplicate_p{today:%Y%m%d}"
    )
    facts = db.execute("select count(*) from ingest.processed_record where device_id = 7 and value = 42").fetchone()
    assert facts == (1,)


@pytest.mark.parametrize(
    "statement",
    [
        "update ingest.{p} set body_text = 'tampered'",
        "delete from ingest.{p}",
        "truncate ingest.{p}",
    ],
)
def test_every_ledger_partition_is_immutable(db: psycopg.Connection, statement: str) -> None:
    db.execute("insert into ingest.raw_record (request_id, batch_index, body_text) values ('r', 0, 'x')")
    db.execute(
        "insert into ingest.raw_record (received_at, request_id, batch_index, body_text) "
        "values ('2003-05-01', 'r', 1, 'x')"
    )  # no day partition: the default partition's row
    for partition in (f"raw_record_p{partitions.today():%Y%m%d}", "raw_record_default"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="immutable ledger"):
            db.execute(statement.format(p=partition))
    assert db.execute("select body_text from ingest.raw_record").fetchall() == [("x",), ("x",)]


def test_a_row_without_its_day_partition_lands_in_the_default_and_is_counted(
    fresh_db: DatabaseTarget, db: psycopg.Connection
) -> None:
    assert set(partitions.default_partition_rows(db).values()) == {0}
    years_ago = datetime(2003, 5, 1, tzinfo=UTC).timestamp()
    (result,) = store(fresh_db.url, [telemetry(device_id=3, timestamp=years_ago)])
    assert result.status == "ok"  # nothing lost: the batch is not failed
    counts = partitions.default_partition_rows(db)
    assert counts["processed_record_default"] == 1
    assert sum(counts.values()) == 1
    # The day cannot be created while its row sits in the default; the other days still are.
    created = partitions.ensure(db, datetime(2003, 4, 30).date(), datetime(2003, 5, 2).date())
    assert "processed_record_p20030501" not in created
    assert "processed_record_p20030430" in created and "raw_record_p20030501" in created


def test_upgrade_of_an_unpartitioned_database_keeps_every_row(pg_server: DatabaseTarget) -> None:
    from alembic import command

    name = f"iot_0005_{os.getpid()}"
    target = pg_server.with_database(name)
    drop_database(pg_server, name)
    try:
        migrate.ensure_database(target)
        command.upgrade(migrate.alembic_config(target), "0005")
        now = time.time()
        old_event = telemetry(device_id=5, value=10, timestamp=now - 40 * DAY)
        store(target.url, [old_event, telemetry(device_id=5, value=11, timestamp=now - 2 * DAY)], "a")
        store(target.url, [old_event, {"device_id": 5}, telemetry(device_id=6, value=3, timestamp=now)], "b")
        with psycopg.connect(target.url, autocommit=True) as conn:
            # Ledger rows of earlier days, as a long-running 0005 database has them.
            conn.execute(
                "insert into ingest.raw_record (received_at, request_id, batch_index, body_text) "
                "values (now() - interval '40 days', 'old', 0, 'x'), (now() - interval '3 days', 'old', 1, 'y')"
            )
            before = snapshot(conn)
            sequences = conn.execute(
                "select (select last_value from ingest.raw_record_id_seq), "
                "(select last_value from ingest.processed_record_id_seq)"
            ).fetchone()
        assert [len(before[t]) for t in TABLES] == [7, 3, 1, 0, 1]

        migrate.upgrade(target)

        with psycopg.connect(target.url, autocommit=True) as conn:
            assert snapshot(conn) == before
            assert set(partitions.default_partition_rows(conn).values()) == {0}
            assert partition_of(conn, "raw_record", "request_id = 'old' and batch_index = 0").startswith(
                "ingest.raw_record_p"
            )
            assert (
                conn.execute(
                    "select (select last_value from ingest.raw_record_id_seq), "
                    "(select last_value from ingest.processed_record_id_seq)"
                ).fetchone()
                == sequences
            )
        # Ingest works, and the pre-upgrade fact still makes its replay a duplicate.
        replay, new = store(target.url, [old_event, telemetry(device_id=6, value=4)], "c")
        assert replay.status == "duplicate" and replay.processed_id == before["processed_record"][0][0]
        assert new.status == "ok" and new.processed_id > max(r[0] for r in before["processed_record"])
        assert new.raw_id > max(r[0] for r in before["raw_record"])
    finally:
        drop_database(pg_server, name)
