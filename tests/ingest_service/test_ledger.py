"""The schema itself: migrations are idempotent, the ledger is immutable, the write path is bulk."""

from __future__ import annotations

import asyncio
import os
import time

import psycopg
import pytest

from ingest_service.core import migrate
from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest.body import split_items
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.results import PendingItem, RequestMeta
from ingest_service.ingest.validation import validate
from ingest_service.ingest.writer import DeviceCache, write_batch
from tests.utils.events import telemetry


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


class CountingConnection:
    """A real connection that counts the statements sent through it."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn
        self.statements = 0

    async def execute(self, *args, **kwargs):
        self.statements += 1
        return await self.conn.execute(*args, **kwargs)


async def _statements_for(url: str, events: list[dict]) -> int:
    import orjson

    async with await psycopg.AsyncConnection.connect(url) as conn:
        catalog = RecordTypeCatalog()
        await catalog.refresh(conn)
        _, items = split_items(orjson.dumps(events), "application/json", 100_000)
        meta = RequestMeta("req", "application/json", None, None)
        now = time.time()
        pending = [
            PendingItem(
                meta, i, item, validate(item.parsed, catalog, secret="s", now=now, max_skew=60, replay_window=60)
            )
            for i, item in enumerate(items)
        ]
        counting = CountingConnection(conn)
        async with conn.transaction():
            results, _ = await write_batch(counting, pending, DeviceCache())  # type: ignore[arg-type]
        assert len(results) == len(events)
        return counting.statements


def test_write_path_statement_count_does_not_grow_with_batch_size(fresh_db: DatabaseTarget) -> None:
    def mixed(n: int, offset: float) -> list[dict]:
        base = time.time() - 1000 + offset
        good = [telemetry(device_id=i % 50 + 1, value=i % 100, timestamp=base + i / 1000) for i in range(n)]
        return good + [{"device_id": 1}] * (n // 10) + good[: n // 10]  # errors and in-batch duplicates

    small = asyncio.run(_statements_for(fresh_db.url, mixed(10, 0)))
    large = asyncio.run(_statements_for(fresh_db.url, mixed(2000, 100)))
    assert small == large
    assert large <= 8
