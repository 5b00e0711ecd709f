"""The bulk write path: one statement for the common batch, binary array parameters, every outcome
in input order, and group commit that answers each request only with its own rows."""

from __future__ import annotations

import asyncio
import time

import orjson
import psycopg

from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest import Delivery, parse
from ingest_service.ingest.answer import ItemResult
from tests.ingest_service.conftest import make_settings
from tests.utils.events import startup, telemetry
from tests.utils.write_path import CountingConnection, request, writer_for


async def _write(url: str, batches: list[bytes]) -> list[tuple[list[ItemResult], list[str]]]:
    """Each body through one writer (its device cache kept between them), with the statements sent."""
    out = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        writer = await writer_for(conn)
        for body in batches:
            counting = CountingConnection(conn)
            (answer,) = await writer.store(counting, [request(body)])  # type: ignore[arg-type]
            assert not isinstance(answer, Exception)
            out.append((answer.results, counting.queries))
    return out


def test_telemetry_batch_is_one_statement(fresh_db: DatabaseTarget) -> None:
    base = time.time() - 500
    first = [telemetry(device_id=i % 20 + 1, value=i % 100, timestamp=base + i / 1000) for i in range(500)]
    second = [telemetry(device_id=i % 20 + 1, value=i % 100, timestamp=base + 1 + i / 1000) for i in range(500)]
    (r1, q1), (r2, q2) = asyncio.run(_write(fresh_db.url, [orjson.dumps(first), orjson.dumps(second)]))
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
    ((results, queries),) = asyncio.run(_write(fresh_db.url, [orjson.dumps(events)]))
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
        rows = conn.execute(
            """
            select r.id, r.batch_index,
                   (p.raw_record_id is not null)::int + (d.raw_record_id is not null)::int
                   + (e.raw_record_id is not null)::int as outcomes,
                   p.value, e.reason
            from ingest.raw_record r
            left join ingest.processed_record p on p.raw_record_id = r.id
            left join ingest.raw_duplicate d on d.raw_record_id = r.id
            left join ingest.ingest_error e on e.raw_record_id = r.id
            order by r.id
            """
        ).fetchall()
    assert [row[1] for row in rows] == list(range(len(events)))  # ledger in input order
    assert [row[2] for row in rows] == [1] * len(events)  # exactly one outcome each
    assert [r.raw_id for r in results] == [row[0] for row in rows]
    assert rows[6][3] == 55.5 and rows[1][4] == "missing_field"


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
            original = service.groups.commit

            async def counting(requests):
                nonlocal commits
                commits += 1
                return await original(requests)

            service.groups.commit = counting
            base = time.time() - 50
            bodies = [orjson.dumps(telemetry(device_id=1, value=i, timestamp=base + i)) for i in range(60)]
            deliveries = [Delivery("http", f"r{i}", "application/json") for i in range(60)]
            answers = await asyncio.gather(
                *(
                    service.ingest(parse(b, "application/json", None, max_inflated_bytes=1000, max_items=10).items, d)
                    for b, d in zip(bodies, deliveries, strict=True)
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
    for i, answer in enumerate(answers):
        (result,) = answer.results
        assert result.status == "ok"
        assert by_raw[result.raw_id] == f"r{i}" and stored[f"r{i}"] == i


def test_group_commit_window_counts_from_the_first_request() -> None:
    """A group whose first request has already waited the window is written at once; a fresh one
    waits for company. (A 30 s window makes the difference unmistakable without timing anything.)"""
    from ingest_service.core.config import Settings
    from ingest_service.ingest import DatabaseUnavailable
    from ingest_service.ingest.groupcommit import GroupCommit, Job

    async def never(requests: list[str]) -> list[str | Exception]:
        raise AssertionError("nothing is committed here")

    async def run() -> tuple[list[str], bool]:
        groups: GroupCommit[str, str] = GroupCommit(
            never, Settings(dev_mode=True, group_commit_window_ms=30_000.0), DatabaseUnavailable
        )
        loop = asyncio.get_running_loop()
        aged: Job[str, str] = Job("aged", 1, loop)
        aged.queued_at -= 31.0  # queued longer ago than the window
        groups._waiting.append(aged)
        gathered = await asyncio.wait_for(groups._gather(), timeout=5)
        groups._slots.release()

        groups._waiting.append(Job("fresh", 1, loop))
        try:
            await asyncio.wait_for(groups._gather(), timeout=0.5)
            fresh_waited = False
        except TimeoutError:
            fresh_waited = True
        return [job.request for job in gathered], fresh_waited

    gathered, fresh_waited = asyncio.run(run())
    assert gathered == ["aged"]
    assert fresh_waited


def test_only_groups_with_startups_are_a_transaction(fresh_db: DatabaseTarget) -> None:
    """The writer sends a group as one statement in autocommit, with one read before it for a
    provisioned id it has not seen; only startups (the limiter's lock, reads and writes together)
    make a transaction."""

    async def run() -> dict[str, tuple[int, int]]:
        base = time.time() - 10
        groups = {
            "legacy": [telemetry(device_id=3, value=1, timestamp=base), {"device_id": 3}],
            "unseen provisioned": [telemetry(device_id=2**31 + 9, value=1, timestamp=base)],
            "good startup": [startup("s", "SN-1")],  # the writer's rules use secret "s"
            "bad startup": [startup("not-the-secret", "SN-2")],  # refused: an error and a counted failure
            "malformed startup": [{"event_type": "device_startup"}],  # no serial to lock: an error only
        }
        seen = {}
        async with await psycopg.AsyncConnection.connect(fresh_db.url, autocommit=True) as conn:
            writer = await writer_for(conn)
            for name, events in groups.items():
                counting = CountingConnection(conn)
                await writer.store(counting, [request(events)])  # type: ignore[arg-type]
                seen[name] = (len(counting.queries), counting.transactions)
            # The startup's device is known to this writer now; another process has to read it once.
            provisioned = [telemetry(device_id=2**31, value=2, timestamp=base)]
            for name, one in (("seen provisioned", writer), ("provisioned, other process", await writer_for(conn))):
                counting = CountingConnection(conn)
                (answer,) = await one.store(counting, [request(provisioned)])  # type: ignore[arg-type]
                assert not isinstance(answer, Exception) and answer.results[0].status in ("ok", "duplicate")
                seen[name] = (len(counting.queries), counting.transactions)
        return seen

    seen = asyncio.run(run())
    assert seen["legacy"] == (1, 0)
    assert seen["malformed startup"] == (1, 0)
    assert seen["unseen provisioned"] == (2, 0)  # the read, then the one statement
    assert seen["seen provisioned"] == (1, 0)
    assert seen["provisioned, other process"] == (2, 0)
    assert seen["good startup"][1] == 1
    assert seen["bad startup"][1] == 1


def test_autocommit_writers_store_a_concurrent_replay_once(fresh_db: DatabaseTarget) -> None:
    """Two autocommit connections write the same events at once: each event is one fact, and every
    ledger row of the loser points to it as a duplicate (ON CONFLICT waits for the winner)."""

    async def run() -> list[list]:
        base = time.time() - 20
        body = orjson.dumps([telemetry(device_id=4, value=i - 100, timestamp=base + i / 100) for i in range(200)])
        async with await psycopg.AsyncConnection.connect(fresh_db.url, autocommit=True) as c1:
            async with await psycopg.AsyncConnection.connect(fresh_db.url, autocommit=True) as c2:
                w1, w2 = await writer_for(c1), await writer_for(c2)
                answers = await asyncio.gather(w1.store(c1, [request(body, "a")]), w2.store(c2, [request(body, "b")]))
        return [answer.results for (answer,) in answers if not isinstance(answer, Exception)]

    a, b = asyncio.run(run())
    statuses = sorted(x.status for x in a + b)
    assert statuses == ["duplicate"] * 200 + ["ok"] * 200
    for x, y in zip(a, b, strict=True):
        assert x.processed_id == y.processed_id and {x.status, y.status} == {"ok", "duplicate"}
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from ingest.processed_record").fetchone() == (200,)
        assert conn.execute("select count(*) from ingest.raw_duplicate").fetchone() == (200,)


def test_request_the_database_refuses_is_kept_as_errors_apart_from_its_group(fresh_db: DatabaseTarget) -> None:
    """The last resort: a request whose write the database refuses (here a constraint added for the
    test) is written alone, each item kept as text with internal_error; the rest of its group is
    stored as usual, and its delivery key answers a retry with those same results."""
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from ingest_service.main import create_app

    with psycopg.connect(fresh_db.url, autocommit=True) as db:
        db.execute("alter table ingest.processed_record add constraint refuse_seven check (value <> 7)")
    base = time.time() - 20
    refused = [telemetry(device_id=21, value=7, timestamp=base), telemetry(device_id=21, value=8, timestamp=base)]
    fine = [[telemetry(device_id=22, value=v, timestamp=base)] for v in range(6)]
    settings = make_settings(fresh_db, group_commit_window_ms=50.0)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(7) as pool:
        bodies = [(refused, {"Idempotency-Key": "refused"})] + [(body, {}) for body in fine]
        answers = list(pool.map(lambda b: client.post("/ingest", json=b[0], headers=b[1]), bodies))
        retry = client.post("/ingest", json=refused, headers={"Idempotency-Key": "refused"})
    assert [a.status_code for a in answers] == [200] * 7
    assert [(r["status"], r["reason"]) for r in answers[0].json()] == [("error", "internal_error")] * 2
    assert all(a.json()[0]["status"] == "ok" for a in answers[1:])
    assert retry.json() == answers[0].json() and retry.headers["idempotent-replayed"] == "true"
    with psycopg.connect(fresh_db.url) as db:
        kept = db.execute(
            "select r.payload, r.body_text from ingest.raw_record r join ingest.ingest_error e"
            " on e.raw_record_id = r.id order by r.id"
        ).fetchall()
        assert [orjson.loads(text) for payload, text in kept if payload is None] == refused  # kept as text
        assert db.execute("select count(*) from ingest.processed_record").fetchone() == (6,)
