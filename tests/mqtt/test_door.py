"""The door on a real PostgreSQL, in-process: the HTTP stages and result shape, the topic rule as a
stored error, refusals, and redeliveries answered from the ledger without writing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psycopg
import pytest

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget
from ingest_service.mqtt.door import MqttDoor, Reply, message_key, open_door
from ingest_service.mqtt.topics import Route
from tests.utils.events import startup, telemetry

SECRET = "mqtt-door-test-secret-of-32-bytes-or-more"
T7 = Route("telemetry", "7")


def settings_for(target: DatabaseTarget, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "dev_mode": False,
        "database_url": target.url,
        "provision_secret": SECRET,
        "group_commit_window_ms": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


def run_door(target: DatabaseTarget, body: Callable[[MqttDoor], Awaitable[Any]], **overrides: Any) -> Any:
    async def main() -> Any:
        async with open_door(settings_for(target, **overrides), target.url) as door:
            return await body(door)

    return asyncio.run(main())


async def send(
    door: MqttDoor, route: Route, payload: Any, content_type: str | None = None, correlation: bytes | None = None
) -> Reply:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    topic = f"devices/{route.ident}/{route.kind}"
    return await door.handle(route, topic, data, content_type, correlation)


def counts(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(
        """select (select count(*) from ingest.raw_record), (select count(*) from ingest.processed_record),
                  (select count(*) from ingest.raw_duplicate), (select count(*) from ingest.device_startup),
                  (select count(*) from ingest.ingest_error)"""
    ).fetchone()
    assert row is not None
    return dict(zip(("raw", "facts", "duplicates", "startups", "errors"), row, strict=True))


@pytest.fixture
def db(fresh_db: DatabaseTarget):
    with psycopg.connect(fresh_db.url, autocommit=True) as conn:
        yield conn


def test_single_event_is_stored_under_its_message_key(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    event = telemetry(7, "battery_charge", 88.5)
    reply = run_door(fresh_db, lambda door: send(door, T7, event))
    result = orjson.loads(reply.payload)
    assert result["status"] == "ok" and reply.stored and not reply.replayed
    assert set(result) == {"raw_id", "processed_id", "status"}  # the HTTP result shape
    request_id, payload = db.execute("select request_id, payload from ingest.raw_record").fetchone()
    assert request_id == "mqtt:" + message_key("devices/7/telemetry", orjson.dumps(event), None, None)
    assert payload == event
    assert counts(db) == {"raw": 1, "facts": 1, "duplicates": 0, "startups": 0, "errors": 0}


def test_redelivery_is_answered_from_the_ledger_and_writes_nothing(
    fresh_db: DatabaseTarget, db: psycopg.Connection
) -> None:
    """A batch with every kind of outcome, delivered twice: the second answer is the first, byte for byte."""
    now = time.time()
    fact = telemetry(7, "platform_extension_mm", -12, now)
    batch = [
        fact,
        fact,  # the same event twice in one message: a fact and its duplicate
        telemetry(7, "platform_extension_mm", 151, now),  # value_out_of_range
        telemetry(8, "battery_charge", 50, now),  # topic_mismatch
        {"device_id": 7},  # missing_field
        startup(SECRET, "SN-77"),  # a startup on a telemetry topic: the topic rule comes first
    ]

    async def twice(door: MqttDoor) -> tuple[Reply, Reply]:
        return await send(door, T7, batch), await send(door, T7, batch)

    first, second = run_door(fresh_db, twice)
    results = orjson.loads(first.payload)
    assert [r["status"] for r in results] == ["ok", "duplicate", "invalid", "invalid", "invalid", "invalid"]
    assert [r.get("reason") for r in results] == [
        None,
        None,
        "value_out_of_range",
        "topic_mismatch",
        "missing_field",
        "topic_mismatch",  # a startup on a telemetry topic
    ]
    assert second.replayed and second.payload == first.payload
    assert counts(db) == {"raw": 6, "facts": 1, "duplicates": 1, "startups": 0, "errors": 4}


def test_replay_rebuilds_unauthorized_provisioned_and_rate_limited(
    fresh_db: DatabaseTarget, db: psycopg.Connection
) -> None:
    serial = "SN-000042"
    route = Route("startup", serial)
    good = startup(SECRET, serial)
    bad = startup("not-the-secret", serial)

    async def scenario(door: MqttDoor) -> list[tuple[Reply, Reply]]:
        pairs = []
        for body in (good, bad):
            pairs.append((await send(door, route, body), await send(door, route, body)))
        # one failure in the window is the limit here (failed_startups_per_serial=1): the serial is refused
        limited = startup("still-not-it", serial, timestamp=time.time() - 1)
        pairs.append((await send(door, route, limited), await send(door, route, limited)))
        return pairs

    pairs = run_door(fresh_db, scenario, failed_startups_per_serial=1)
    statuses = [orjson.loads(first.payload)["status"] for first, _ in pairs]
    assert statuses == ["provisioned", "unauthorized", "rate_limited"]
    assert orjson.loads(pairs[0][0].payload)["device_id"] >= 2**31
    for first, again in pairs:
        assert again.replayed and again.payload == first.payload
    assert counts(db)["raw"] == 3


def test_correlation_data_tells_identical_payloads_apart(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    event = telemetry(7, "battery_charge", 10.0)

    async def scenario(door: MqttDoor) -> list[Reply]:
        return [
            await send(door, T7, event, correlation=b"1"),
            await send(door, T7, event, correlation=b"2"),
            await send(door, T7, event, correlation=b"1"),
        ]

    first, second, third = run_door(fresh_db, scenario)
    assert orjson.loads(first.payload)["status"] == "ok"
    assert orjson.loads(second.payload)["status"] == "duplicate"  # a second message: its own raw row
    assert third.replayed and third.payload == first.payload
    assert counts(db) == {"raw": 2, "facts": 1, "duplicates": 1, "startups": 0, "errors": 0}


def test_concurrent_deliveries_of_one_message_store_it_once(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    event = telemetry(7, "battery_charge", 11.0)

    async def scenario(door: MqttDoor) -> list[Reply]:
        return list(await asyncio.gather(*(send(door, T7, event) for _ in range(5))))

    replies = run_door(fresh_db, scenario)
    assert sum(not r.replayed for r in replies) == 1
    assert len({r.payload for r in replies}) == 1
    assert counts(db)["raw"] == 1


def test_ndjson_by_content_type(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    lines = [orjson.dumps(telemetry(7, "battery_charge", v)) for v in (1.0, 2.0)] + [b"not json"]
    body = b"\n".join(lines)

    async def scenario(door: MqttDoor) -> tuple[Reply, Reply]:
        return await send(door, T7, body, content_type="application/x-ndjson"), await send(door, T7, body)

    ndjson, plain = run_door(fresh_db, scenario)
    assert [r["status"] for r in orjson.loads(ndjson.payload)] == ["ok", "ok", "invalid"]
    # without the Content Type the same bytes are one (invalid) JSON body, as on HTTP
    assert orjson.loads(plain.payload)["reason"] == "invalid_json"
    assert counts(db)["raw"] == 4


def test_startup_by_its_topic(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    async def scenario(door: MqttDoor) -> list[Reply]:
        return [
            await send(door, Route("startup", "SN-1"), startup(SECRET, "SN-1")),
            await send(door, Route("startup", "SN-1"), startup(SECRET, "SN-2")),  # another serial
            await send(door, Route("startup", "SN-1"), telemetry(7, "battery_charge", 5.0)),
        ]

    provisioned, other_serial, telemetry_there = (orjson.loads(r.payload) for r in run_door(fresh_db, scenario))
    assert provisioned["status"] == "provisioned" and provisioned["device_id"] >= 2**31
    assert other_serial["reason"] == telemetry_there["reason"] == "topic_mismatch"
    assert "SN-2" in other_serial["detail"]
    reasons = db.execute("select reason from ingest.ingest_error order by raw_record_id").fetchall()
    assert reasons == [("topic_mismatch",), ("topic_mismatch",)]
    assert counts(db)["startups"] == 1


def test_messages_over_the_limits_are_refused_and_not_stored(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    many = [telemetry(7, "battery_charge", float(i)) for i in range(4)]

    async def scenario(door: MqttDoor) -> tuple[Reply, Reply]:
        return await send(door, T7, many), await send(door, T7, b"x" * 2000)

    too_many, too_large = run_door(fresh_db, scenario, max_batch_items=3, max_body_bytes=1000)
    assert orjson.loads(too_many.payload) == {
        "raw_id": None,
        "processed_id": None,
        "status": "refused",
        "reason": "too_many_items",
        "detail": "4 items exceed the 3-item limit",
        "stored": False,
    }
    assert orjson.loads(too_large.payload)["reason"] == "body_too_large"
    assert not too_many.stored and not too_large.stored
    assert counts(db)["raw"] == 0
