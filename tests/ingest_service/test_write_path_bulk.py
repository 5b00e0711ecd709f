"""The bulk write path: one statement for the common batch, binary array parameters, every outcome
in input order, and group commit that answers each request only with its own rows."""

from __future__ import annotations

import asyncio
import time

import orjson
import psycopg

from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest.body import split_items
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.results import PendingItem, RequestMeta
from ingest_service.ingest.validation import validate
from ingest_service.ingest.writer import DeviceCache, write_batch
from tests.ingest_service.conftest import make_settings
from tests.utils.events import startup, telemetry
from tests.utils.ledger import assert_one_outcome_per_raw_row


class CountingConnection:
    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self.conn = conn
        self.queries: list[str] = []

    async def execute(self, query, params=None):
        self.queries.append(" ".join(str(query).split())[:40])
        return await self.conn.execute(query, params)


def _pending(catalog: RecordTypeCatalog, body: bytes, request_id: str = "req") -> list[PendingItem]:
    _, items = split_items(body, "application/json", 100_000)
    meta = RequestMeta(request_id, "application/json", None, "127.0.0.1")
    now = time.time()
    return [
        PendingItem(meta, i, item, validate(item.parsed, catalog, secret="s", now=now, max_skew=60, replay_window=60))
        for i, item in enumerate(items)
    ]


async def _write(url: str, batches: list[bytes], cache: DeviceCache) -> list[tuple[list, list[str]]]:
    out = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        catalog = RecordTypeCatalog()
        await catalog.refresh(conn)
        for body in batches:
            counting = CountingConnection(conn)
            async with conn.transaction():
                results, touched = await write_batch(counting, _pending(catalog, body), cache)  # type: ignore[arg-type]
            for device_id in touched:
                cache.touched[device_id] = time.monotonic()
            out.append((results, counting.queries))
    return out


def test_telemetry_batch_is_one_statement(fresh_db: DatabaseTarget) -> None:
    base = time.time() - 500
    first = [telemetry(device_id=i % 20 + 1, value=i % 100, timestamp=base + i / 1000) for i in range(500)]
    second = [telemetry(device_id=i % 20 + 1, value=i % 100, timestamp=base + 1 + i / 1000) for i in range(500)]
    (r1, q1), (r2, q2) = asyncio.run(_write(fresh_db.url, [orjson.dumps(first), orjson.dumps(second)], DeviceCache()))
    assert len(q1) == 1  # new legacy devices are created by the same statement (ingest.write_items)
    assert len(q2) == 1  # devices cached: ledger + facts in one statement
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from ingest.device").fetchone() == (20,)
    assert [r.status for r in r1 + r2] == ["ok"] * 1000
    raw_ids = [r.raw_id for r in r2]
    assert raw_ids == sorted(raw_ids) and len(set(raw_ids)) == 500  # ids follow the input order


def test_mixed_batch_outcomes_in_input_order(fresh_db: DatabaseTarget) -> None:
    base = time.time() - 100
    events: list = [
        telemetry(device_id=7, value=1, timestamp=base),
        {"device_id": 7},  # missing fields
        telemetry(device_id=7, value=1, timestamp=base),  # in-batch replay of the first
        telemetry(device_id=7, value="high", timestamp=base),  # wrong type
        [1, 2],  # not an object
        telemetry(device_id=2**31 + 5, value=3, timestamp=base),  # provisioned id never provisioned
        telemetry(device_id=8, event_type="battery_charge", value=55.5, timestamp=base),
    ]
    ((results, queries),) = asyncio.run(_write(fresh_db.url, [orjson.dumps(events)], DeviceCache()))
    assert [r.status for r in results] == ["ok", "invalid", "duplicate", "invalid", "invalid", "invalid", "ok"]
    assert [r.reason for r in results] == [
        None,
        "missing_field",
        None,
        "wrong_type",
        "not_an_object",
        "unknown_device",
        None,
    ]
    assert results[2].processed_id == results[0].processed_id
    assert len(queries) == 2  # find the provisioned device, then everything else in one statement

    with psycopg.connect(fresh_db.url) as conn:
        assert assert_one_outcome_per_raw_row(conn).raw_rows == len(events)  # exactly one outcome each
        rows = conn.execute(
            """
            select r.id, r.batch_index, p.value, e.reason
            from ingest.raw_record r
            left join ingest.processed_record p on p.raw_record_id = r.id
            left join ingest.ingest_error e on e.raw_record_id = r.id
            order by r.id
            """
        ).fetchall()
    assert [row[1] for row in rows] == list(range(len(events)))  # ledger in input order
    assert [r.raw_id for r in results] == [row[0] for row in rows]
    assert rows[6][2] == 55.5 and rows[1][3] == "missing_field"


def test_binary_parameters_keep_text_bytes_and_unicode(fresh_db: DatabaseTarget) -> None:
    """Strings with quotes, backslashes, braces and non-ASCII survive the binary array parameters."""
    from fastapi.testclient import TestClient

    from ingest_service.main import create_app

    odd = {"device_id": 3, "event_type": 'x"\\{},NULL', "value": 1, "timestamp": time.time(), "note": "é→\u2028"}
    with TestClient(create_app(make_settings(fresh_db))) as client:
        answer = client.post("/ingest", content=orjson.dumps(odd), headers={"content-type": "application/json"})
        raw = client.post("/ingest", content=b"\xff\xfe{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 422 and answer.json()["reason"] == "unknown_event_type"
    assert raw.status_code == 422
    with psycopg.connect(fresh_db.url) as conn:
        payload, event_type = conn.execute(
            "select r.payload, e.event_type from ingest.raw_record r join ingest.ingest_error e"
            " on e.raw_record_id = r.id where r.id = %s",
            (answer.json()["raw_id"],),
        ).fetchone()
        body = conn.execute("select body_bytes from ingest.raw_record where id = %s", (raw.json()["raw_id"],))
        assert body.fetchone()[0] == b"\xff\xfe{not json"
    assert payload == odd and event_type == odd["event_type"]


def test_group_commit_answers_each_request_with_its_own_rows(fresh_db: DatabaseTarget) -> None:
    """Concurrent single events share transactions (fewer commits than requests); each answer is its own."""
    from psycopg_pool import AsyncConnectionPool

    from ingest_service.ingest.service import IngestService

    async def run() -> tuple[list, int]:
        settings = make_settings(fresh_db, group_commit_window_ms=5.0, writers=2)
        async with AsyncConnectionPool(fresh_db.url, min_size=2, max_size=4) as pool:
            service = IngestService(pool, settings)
            await service.start()
            commits = 0
            original = service._commit

            async def counting(jobs):
                nonlocal commits
                commits += 1
                await original(jobs)

            service._commit = counting  # type: ignore[method-assign]
            base = time.time() - 50
            bodies = [orjson.dumps(telemetry(device_id=1, value=i, timestamp=base + i)) for i in range(60)]
            meta = [RequestMeta(f"r{i}", "application/json", None, None) for i in range(60)]
            answers = await asyncio.gather(
                *(
                    service.ingest(split_items(b, "application/json", 10)[1], m)
                    for b, m in zip(bodies, meta, strict=True)
                )
            )
            await service.stop()
            return answers, commits

    answers, commits = asyncio.run(run())
    assert commits < 60
    with psycopg.connect(fresh_db.url) as conn:
        stored = dict(
            conn.execute(
                "select r.request_id, p.value from ingest.raw_record r"
                " join ingest.processed_record p on p.raw_record_id = r.id"
            ).fetchall()
        )
        by_raw = dict(conn.execute("select id, request_id from ingest.raw_record").fetchall())
    assert len(stored) == 60
    for i, (result,) in enumerate(answers):
        assert result.status == "ok"
        assert by_raw[result.raw_id] == f"r{i}" and stored[f"r{i}"] == i


def test_group_commit_window_counts_from_the_first_request(fresh_db: DatabaseTarget) -> None:
    """A group whose first request has already waited the window is written at once; a fresh one
    waits for company. (A 30 s window makes the difference unmistakable without timing anything.)"""
    from psycopg_pool import AsyncConnectionPool

    from ingest_service.ingest.service import IngestService, _Job

    async def run() -> tuple[list[str], bool]:
        settings = make_settings(fresh_db, group_commit_window_ms=30_000.0)
        async with AsyncConnectionPool(fresh_db.url, min_size=1, max_size=2) as pool:
            service = IngestService(pool, settings)
            loop = asyncio.get_running_loop()
            aged, fresh = _Job([], loop), _Job([], loop)
            aged.queued_at -= 31.0  # queued longer ago than the window
            service._waiting.append(aged)
            gathered = await asyncio.wait_for(service._gather(), timeout=5)
            service._slots.release()

            service._waiting.append(fresh)
            try:
                await asyncio.wait_for(service._gather(), timeout=0.5)
                fresh_waited = False
            except TimeoutError:
                fresh_waited = True
            return ["aged" if job is aged else "other" for job in gathered], fresh_waited

    gathered, fresh_waited = asyncio.run(run())
    assert gathered == ["aged"]
    assert fresh_waited


def test_only_startups_and_unseen_provisioned_devices_need_a_transaction(fresh_db: DatabaseTarget) -> None:
    """The service writes a group without BEGIN/COMMIT when write_batch sends a single statement."""
    from ingest_service.ingest.writer import needs_transaction

    async def pending(events: list) -> list[PendingItem]:
        async with await psycopg.AsyncConnection.connect(fresh_db.url) as conn:
            catalog = RecordTypeCatalog()
            await catalog.refresh(conn)
        return _pending(catalog, orjson.dumps(events))

    base = time.time() - 10
    cache = DeviceCache()
    legacy = asyncio.run(pending([telemetry(device_id=3, value=1, timestamp=base), {"device_id": 3}]))
    provisioned = asyncio.run(pending([telemetry(device_id=2**31 + 9, value=1, timestamp=base)]))
    good_startup = asyncio.run(pending([startup("s", "SN-1")]))  # _pending validates with secret "s"
    bad_startup = asyncio.run(pending([startup("not-the-secret", "SN-2")]))  # refused: an error row
    assert not needs_transaction(legacy, cache)
    assert not needs_transaction(bad_startup, cache)
    assert needs_transaction(provisioned, cache)
    assert needs_transaction(good_startup, cache)
    cache.touched[2**31 + 9] = time.monotonic()  # seen (and so known to exist) by this process
    assert not needs_transaction(provisioned, cache)


def test_autocommit_writers_store_a_concurrent_replay_once(fresh_db: DatabaseTarget) -> None:
    """Two autocommit connections write the same events at once: each event is one fact, and every
    ledger row of the loser points to it as a duplicate (ON CONFLICT waits for the winner)."""

    async def run() -> list[list]:
        base = time.time() - 20
        body = orjson.dumps([telemetry(device_id=4, value=i - 100, timestamp=base + i / 100) for i in range(200)])
        async with await psycopg.AsyncConnection.connect(fresh_db.url, autocommit=True) as c1:
            async with await psycopg.AsyncConnection.connect(fresh_db.url, autocommit=True) as c2:
                catalog = RecordTypeCatalog()
                await catalog.refresh(c1)
                answers = await asyncio.gather(
                    write_batch(c1, _pending(catalog, body, "a"), DeviceCache()),
                    write_batch(c2, _pending(catalog, body, "b"), DeviceCache()),
                )
        return [results for results, _ in answers]

    a, b = asyncio.run(run())
    statuses = sorted(x.status for x in a + b)
    assert statuses == ["duplicate"] * 200 + ["ok"] * 200
    for x, y in zip(a, b, strict=True):
        assert x.processed_id == y.processed_id and {x.status, y.status} == {"ok", "duplicate"}
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from ingest.processed_record").fetchone() == (200,)
        assert conn.execute("select count(*) from ingest.raw_duplicate").fetchone() == (200,)
