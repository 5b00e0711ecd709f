"""The schema itself: migrations are idempotent, the ledger is immutable, the write path is bulk."""

from __future__ import annotations

import asyncio
import os
import time

import psycopg
import pytest

from ingest_service.core import migrate
from ingest_service.core.database import DatabaseTarget
from tests.utils.events import telemetry
from tests.utils.write_path import CountingConnection, request, writer_for


def test_migrations_upgrade_an_existing_database_step_by_step(pg_server: DatabaseTarget) -> None:
    """Regression: an upgrade of a database already at an older revision must commit its steps."""
    from alembic import command

    from tests.utils.db import drop_database

    target = pg_server.with_database(f"iot_steps_{os.getpid()}")
    drop_database(pg_server, "iot_steps_" + str(os.getpid()))
    try:
        migrate.ensure_database(target)
        command.upgrade(migrate.alembic_config(target), "0001")
        assert migrate.current_revision(target) == "0001"
        migrate.upgrade(target)
        assert migrate.current_revision(target) == migrate.head_revision() != "0001"
    finally:
        drop_database(pg_server, target.parts["dbname"])


def test_migrations_are_idempotent(fresh_db: DatabaseTarget) -> None:
    migrate.upgrade(fresh_db)
    migrate.upgrade(fresh_db)
    assert migrate.current_revision(fresh_db) == migrate.head_revision()


@pytest.mark.parametrize(
    "statement",
    [
        "update ingest.raw_record set body_text = 'tampered'",
        "delete from ingest.raw_record",
        "truncate ingest.raw_record cascade",
    ],
)
def test_raw_record_is_immutable(db: psycopg.Connection, statement: str) -> None:
    db.execute("insert into ingest.raw_record (request_id, batch_index, body_text) values ('r', 0, 'x')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="immutable ledger"):
        db.execute(statement)
    assert db.execute("select body_text from ingest.raw_record").fetchall() == [("x",)]


async def _statements_for(url: str, events: list[dict]) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        writer = await writer_for(conn)
        counting = CountingConnection(conn)
        (answer,) = await writer.store(counting, [request(events)])  # type: ignore[arg-type]
        assert not isinstance(answer, Exception) and len(answer.results) == len(events)
        return len(counting.queries)


def test_write_path_statement_count_does_not_grow_with_batch_size(fresh_db: DatabaseTarget) -> None:
    def mixed(n: int, offset: float) -> list[dict]:
        base = time.time() - 1000 + offset
        good = [telemetry(device_id=i % 50 + 1, value=i % 100, timestamp=base + i / 1000) for i in range(n)]
        return good + [{"device_id": 1}] * (n // 10) + good[: n // 10]  # errors and in-batch duplicates

    small = asyncio.run(_statements_for(fresh_db.url, mixed(10, 0)))
    large = asyncio.run(_statements_for(fresh_db.url, mixed(2000, 100)))
    assert small == large
    assert large <= 8


def test_migration_0005_runs_again_unchanged(db: psycopg.Connection) -> None:
    """Additive and idempotent: its statements can run on a database that already has them."""
    import importlib

    m = importlib.import_module("ingest_service.migrations.versions.0005_startup_failures_and_delivery_keys")
    for _ in range(2):
        db.execute(m.TABLES)
        db.execute(m.WRITE_KEYED_ITEMS)
        db.execute(m.GRANTS)
    tables = db.execute(
        "select tablename from pg_tables where schemaname = 'ingest' and tablename in ('delivery', 'startup_failure')"
    ).fetchall()
    assert sorted(tables) == [("delivery",), ("startup_failure",)]
