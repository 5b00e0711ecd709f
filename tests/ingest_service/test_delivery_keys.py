"""Delivery keys: the HTTP Idempotency-Key, and the same mechanism for any door. A repeat of a key
returns the stored results and writes nothing; another body under the same key is refused."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg_pool import AsyncConnectionPool

from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest import Delivery, DeliveryKeyReused, IngestService, parse
from ingest_service.ingest.writer import Writer
from ingest_service.main import create_app
from tests.ingest_service.conftest import SECRET, make_settings
from tests.utils.events import startup, telemetry
from tests.utils.processes import running_api
from tests.utils.write_path import load_catalog, rules

TABLES = ("raw_record", "processed_record", "raw_duplicate", "device_startup", "ingest_error", "delivery")


def counts(db: psycopg.Connection) -> dict[str, int]:
    out = {}
    for table in TABLES:
        row = db.execute(f"select count(*) from ingest.{table}").fetchone()
        assert row is not None
        out[table] = row[0]
    return out


def mixed_batch() -> list[Any]:
    """One item of each outcome: ok, duplicate, invalid, provisioned, unauthorized."""
    ts = time.time() - 30
    return [
        telemetry(device_id=11, value=3, timestamp=ts),
        telemetry(device_id=11, value=3, timestamp=ts),
        {"device_id": 11},
        startup(SECRET, "SN-KEY-1"),
        startup("guess", "SN-KEY-2"),
    ]


@pytest.fixture
def client(fresh_db: DatabaseTarget) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(fresh_db))) as test_client:
        yield test_client


def test_retry_with_idempotency_key_returns_the_stored_results(client: TestClient, db: psycopg.Connection) -> None:
    body = orjson.dumps(mixed_batch())
    first = client.post("/ingest", content=body, headers={"Idempotency-Key": "batch-1"})
    assert first.status_code == 200
    assert [r["status"] for r in first.json()] == ["ok", "duplicate", "invalid", "provisioned", "unauthorized"]
    assert "idempotent-replayed" not in first.headers
    stored = counts(db)
    assert stored == {
        "raw_record": 5,
        "processed_record": 1,
        "raw_duplicate": 1,
        "device_startup": 1,
        "ingest_error": 2,
        "delivery": 1,
    }

    gzipped = {"Idempotency-Key": "batch-1", "Content-Encoding": "gzip"}
    for retry in (
        client.post("/ingest", content=body, headers={"Idempotency-Key": "batch-1"}),
        client.post("/ingest", content=gzip.compress(body), headers=gzipped),  # the same items, another encoding
    ):
        assert retry.status_code == 200
        assert retry.json() == first.json()  # the same raw ids, facts, device and reasons
        assert retry.headers["idempotent-replayed"] == "true"
    assert counts(db) == stored  # no second raw row, fact, startup or error
    failures = db.execute("select count(*) from ingest.startup_failure").fetchone()
    assert failures == (1,)  # the replayed bad token was not counted again


def test_single_event_replay_keeps_its_status_code(client: TestClient, db: psycopg.Connection) -> None:
    invalid = client.post("/ingest", json={"device_id": 4}, headers={"Idempotency-Key": "one-invalid"})
    assert (invalid.status_code, invalid.json()["reason"]) == (422, "missing_field")
    again = client.post("/ingest", json={"device_id": 4}, headers={"Idempotency-Key": "one-invalid"})
    assert (again.status_code, again.json()) == (422, invalid.json())
    event = telemetry(device_id=4, value=1, timestamp=time.time() - 1)
    ok = client.post("/ingest", json=event, headers={"Idempotency-Key": "one-ok"})
    assert ok.status_code == 200
    assert client.post("/ingest", json=event, headers={"Idempotency-Key": "one-ok"}).json() == ok.json()
    assert counts(db)["raw_record"] == 2


def test_same_key_with_another_body_is_refused(client: TestClient, db: psycopg.Connection) -> None:
    first = client.post("/ingest", json=[telemetry(device_id=5, value=1)], headers={"Idempotency-Key": "k-5"})
    assert first.status_code == 200
    stored = counts(db)
    other = client.post("/ingest", json=[telemetry(device_id=5, value=2)], headers={"Idempotency-Key": "k-5"})
    assert other.status_code == 422
    body = other.json()
    assert (body["status"], body["reason"], body["stored"]) == ("refused", "idempotency_key_reused", False)
    assert counts(db) == stored
    unkeyed = client.post("/ingest", json=[telemetry(device_id=5, value=2)])  # without a key: stored as usual
    assert unkeyed.status_code == 200 and counts(db)["raw_record"] == stored["raw_record"] + 1


@pytest.mark.parametrize("key", ["", "   ", "x" * 256, "caf\u00e9", "tab\there"])
def test_unusable_idempotency_key_is_refused(client: TestClient, db: psycopg.Connection, key: str) -> None:
    response = client.post(
        "/ingest", json=telemetry(device_id=6), headers=[(b"idempotency-key", key.encode("latin-1"))]
    )
    assert response.status_code == 400
    assert (response.json()["reason"], response.json()["stored"]) == ("invalid_idempotency_key", False)
    assert counts(db)["raw_record"] == 0


def test_concurrent_duplicates_store_once(client: TestClient, db: psycopg.Connection) -> None:
    """Many copies of one keyed request at once: whichever commits first stores it, every other one
    (in its group, or in another group waiting on the key) is answered with its results."""
    body = orjson.dumps([telemetry(device_id=12, value=v, timestamp=time.time() - 10) for v in range(20)])
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda _: client.post("/ingest", content=body, headers={"Idempotency-Key": "race"}), range(32))
        )
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 31
    assert counts(db)["raw_record"] == 20 and counts(db)["processed_record"] == 20


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_concurrent_duplicates_across_two_workers_store_once(fresh_db: DatabaseTarget) -> None:
    body = orjson.dumps([telemetry(device_id=13, value=v, timestamp=time.time() - 10) for v in range(50)])

    def post(url: str, key: str) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=60) as one_shot:  # a new connection: either worker may take it
            return one_shot.post("/ingest", content=body, headers={"Idempotency-Key": key})

    with running_api(fresh_db, SECRET, workers=2) as url, ThreadPoolExecutor(12) as pool:
        keys = [f"race-{i % 4}" for i in range(48)]  # four keys, twelve copies of each
        answers = list(pool.map(lambda key: post(url, key), keys))
    assert {a.status_code for a in answers} == {200}
    by_key: dict[str, set[bytes]] = {}
    for key, answer in zip(keys, answers, strict=True):
        by_key.setdefault(key, set()).add(answer.content)
    assert all(len(contents) == 1 for contents in by_key.values())
    with psycopg.connect(fresh_db.url) as db:
        stored = counts(db)
    # each key stored once: its first 50 rows are the facts, the other three keys' rows repeat them
    assert stored["raw_record"] == 4 * 50 and stored["processed_record"] == 50 and stored["delivery"] == 4


def test_key_expires_after_its_window(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    with TestClient(create_app(make_settings(fresh_db, delivery_key_window_seconds=0.5))) as client:
        event = [telemetry(device_id=14, value=1, timestamp=time.time() - 5)]
        first = client.post("/ingest", json=event, headers={"Idempotency-Key": "short"})
        assert client.post("/ingest", json=event, headers={"Idempotency-Key": "short"}).json() == first.json()
        time.sleep(0.6)
        later = client.post("/ingest", json=event, headers={"Idempotency-Key": "short"})
        assert later.status_code == 200 and "idempotent-replayed" not in later.headers
        assert later.json()[0]["status"] == "duplicate"  # stored again: a new raw row, the same fact
        assert later.json()[0]["raw_id"] != first.json()[0]["raw_id"]
        again = client.post("/ingest", json=event, headers={"Idempotency-Key": "short"})
        assert again.json() == later.json()  # the key now answers with its new delivery
    assert counts(db)["raw_record"] == 2 and counts(db)["delivery"] == 1


def test_sweep_deletes_expired_keys_and_old_failures(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    with TestClient(create_app(make_settings(fresh_db))) as client:
        client.post("/ingest", json=[telemetry(device_id=15)], headers={"Idempotency-Key": "old"})
        client.post("/ingest", json=[telemetry(device_id=15, value=2)], headers={"Idempotency-Key": "new"})
        client.post("/ingest", json=[startup("guess", "SN-SWEEP")])
    db.execute("update ingest.delivery set created_at = now() - interval '2 days' where key = 'old'")
    db.execute("update ingest.startup_failure set failed_at = now() - interval '2 minutes'")

    async def sweep() -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(fresh_db.url, autocommit=True) as conn:
            writer = Writer(rules(await load_catalog(conn), failure_window=60.0), delivery_key_window=86400.0)
            return await writer.sweep(conn)

    assert asyncio.run(sweep()) == (1, 1)
    assert db.execute("select key from ingest.delivery").fetchall() == [("new",)]
    assert counts(db)["raw_record"] == 3  # the ledger keeps every row


def test_keys_belong_to_their_door_and_repeat_within_a_group(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    """The write path's own API, as a broker door uses it: copies of a key within one group are
    written once; the same key from another door is another delivery; another body is refused;
    a recorded key's results can be read back."""

    async def run() -> list[Any]:
        settings = make_settings(fresh_db, group_commit_window_ms=200.0)
        async with AsyncConnectionPool(fresh_db.url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
            service = IngestService(pool, settings)
            await service.start()
            body = orjson.dumps([telemetry(device_id=16, value=1, timestamp=time.time() - 5)])
            other = orjson.dumps([telemetry(device_id=16, value=2, timestamp=time.time() - 5)])

            def items(data: bytes) -> list[Any]:
                return parse(data, "application/json", None, max_inflated_bytes=10_000, max_items=10).items

            calls = [
                service.ingest(items(body), Delivery("mqtt", "m1", key="msg-1")),
                service.ingest(items(body), Delivery("mqtt", "m2", key="msg-1")),  # redelivered
                service.ingest(items(other), Delivery("mqtt", "m3", key="msg-1")),  # another body: refused
                service.ingest(items(body), Delivery("jetstream", "j1", key="msg-1")),  # another door's key
            ]
            answers = await asyncio.gather(*calls, return_exceptions=True)
            # what a receipt resolves to: the stored results of a key, or None before it is stored
            answers += [await service.recorded("mqtt", "msg-1"), await service.recorded("mqtt", "msg-2")]
            await service.stop()
            return answers

    first, redelivered, refused, other_door, receipt, unknown = asyncio.run(run())
    assert receipt.results == first.results and receipt.replayed and unknown is None
    assert not first.replayed and redelivered.replayed and not other_door.replayed
    assert redelivered.results == first.results
    assert isinstance(refused, DeliveryKeyReused) and (refused.door, refused.key) == ("mqtt", "msg-1")
    assert other_door.results[0].status == "duplicate"
    assert db.execute("select door, key from ingest.delivery order by door").fetchall() == [
        ("jetstream", "msg-1"),
        ("mqtt", "msg-1"),
    ]
    assert counts(db)["raw_record"] == 2
