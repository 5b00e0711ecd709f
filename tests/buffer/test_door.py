"""The JetStream door's calls into the write path, on a real PostgreSQL (no NATS needed): a message
decodes to what the HTTP route makes of the same body, the results a receipt reads back (the
request id's delivery key) are exactly what the write path answered, and a redelivery writes nothing."""

from __future__ import annotations

import asyncio
import gzip
import time

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.buffer import door
from ingest_service.buffer.publisher import parse_receipt, receipt_id
from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget, write_pool
from ingest_service.core.logging import new_request_id
from ingest_service.ingest.body import split_items
from ingest_service.main import create_app
from tests.ingest_service.conftest import SECRET, make_settings
from tests.utils.events import startup, telemetry

PROVISIONED_NEVER_SEEN = 2**31 + 5


def mixed_batch() -> list[object]:
    """One item of every status the write path answers."""
    now = time.time()
    event = telemetry(device_id=3, value=-40, timestamp=now - 10)
    bad_tokens = [dict(startup(SECRET, serial="SN-LOCKED"), provision_token="0" * 64) for _ in range(6)]
    return [
        event,
        event,  # duplicate of the fact above
        telemetry(device_id=4, event_type="battery_charge", value=101),  # value_out_of_range
        {"device_id": 5},  # missing_field
        "not an object",
        telemetry(device_id=PROVISIONED_NEVER_SEEN),  # unknown_device
        startup(SECRET, serial="SN-NEW-1"),  # provisioned
        dict(startup(SECRET, serial="SN-OLD"), timestamp=now - 3 * 86400),  # stale_startup
        *bad_tokens,  # five invalid_token, then rate_limited
    ]


def _request(items_body: bytes, settings: Settings, content_type: str, encoding: str | None) -> door.BufferedRequest:
    request_id = door.REQUEST_ID_PREFIX + new_request_id()
    delivery = door.Delivery("http", request_id, content_type, encoding, "10.0.0.9")
    headers = door.message_headers(request_id, delivery, time.time())
    return door.decode(headers, items_body, settings)


async def _store_and_read(target: DatabaseTarget, settings: Settings, requests: list[door.BufferedRequest]):
    pool = write_pool(settings, target.url, "test")
    await pool.open()
    try:
        service = await door.start_service(pool, settings)
        try:
            answered = [(await door.store(service, request)).results for request in requests]
            stored = {}
            for request_id in [r.request_id for r in requests] + ["js-" + "0" * 32]:
                results = await door.recorded(service, request_id)
                if results is not None:
                    stored[request_id] = results
        finally:
            await service.stop()
    finally:
        await pool.close()
    return answered, stored


def test_stored_results_are_what_the_write_path_answered(fresh_db: DatabaseTarget) -> None:
    settings = make_settings(fresh_db)
    body = orjson.dumps(mixed_batch())
    ndjson = b'{"device_id": 6, "event_type": "platform_extension_mm", "value": 1, "timestamp": 1.7e9}\nnot json\n'
    requests = [
        _request(body, settings, "application/json", None),
        _request(gzip.compress(ndjson), settings, "application/x-ndjson", "gzip"),
    ]
    answered, stored = asyncio.run(_store_and_read(fresh_db, settings, requests))

    statuses = {r.status for r in answered[0]}
    assert statuses == {"ok", "duplicate", "invalid", "provisioned", "unauthorized", "rate_limited"}
    reasons = {r.reason for r in answered[0]} | {r.reason for r in answered[1]}
    assert {"value_out_of_range", "missing_field", "not_an_object", "unknown_device", "stale_startup"} <= reasons
    assert {"invalid_token", "too_many_failed_startups", "invalid_json"} <= reasons
    assert set(stored) == {r.request_id for r in requests}, "an unknown request id has no results"
    for request, results in zip(requests, answered, strict=True):
        assert [r.as_dict() for r in stored[request.request_id]] == [r.as_dict() for r in results]

    with psycopg.connect(fresh_db.url) as conn:
        rows = conn.execute(
            "select request_id, batch_index, content_type, content_encoding, remote_addr from ingest.raw_record"
            " where request_id = %s order by batch_index",
            (requests[1].request_id,),
        ).fetchall()
    assert rows == [
        (requests[1].request_id, 0, "application/x-ndjson", "gzip", "10.0.0.9"),
        (requests[1].request_id, 1, "application/x-ndjson", "gzip", "10.0.0.9"),
    ]


def test_decode_makes_the_items_the_route_makes() -> None:
    settings = Settings(dev_mode=True)
    body = orjson.dumps(mixed_batch())
    request = _request(gzip.compress(body), settings, "application/json", "gzip")
    _, expected = split_items(body, "application/json", settings.max_batch_items)
    assert request.items == expected
    assert request.delivery.content_encoding == "gzip" and request.delivery.remote_addr == "10.0.0.9"
    assert request.delivery.door == "jetstream" and request.delivery.key == request.request_id


def test_decode_refuses_what_this_writer_may_not_store() -> None:
    settings = Settings(dev_mode=True, max_batch_items=2)
    with pytest.raises(door.BodyRejected) as refused:
        _request(orjson.dumps([telemetry()] * 3), settings, "application/json", None)
    assert refused.value.reason == "too_many_items"
    with pytest.raises(door.MalformedMessage):
        door.decode({"Nats-Msg-Id": "someone-elses-id"}, b"{}", settings)
    with pytest.raises(door.MalformedMessage):
        door.decode(None, b"{}", settings)


def test_receipt_ids_round_trip_and_refuse_anything_else() -> None:
    request_id = door.REQUEST_ID_PREFIX + new_request_id()
    assert parse_receipt(receipt_id(request_id, 42)) == (request_id, 42)
    for bad in (
        "",
        "42",
        "js--1",
        f"{request_id}-",
        f"{request_id}-x1",
        f"{request_id[:-1]}-3",
        "js-" + "g" * 32 + "-1",
    ):
        assert parse_receipt(bad) is None, bad


def test_partition_key_is_the_first_device() -> None:
    items = split_items(orjson.dumps([telemetry(device_id=9), telemetry(device_id=1)]), "application/json", 10)[1]
    assert door.partition_key(items) == "9"
    assert door.partition_key(split_items(orjson.dumps(startup(SECRET, serial="SN-1")), None, 10)[1]) == "SN-1"
    assert door.partition_key(split_items(b"not json", None, 10)[1]) == ""


async def _store_twice(target: DatabaseTarget, settings: Settings, request: door.BufferedRequest):
    pool = write_pool(settings, target.url, "test")
    await pool.open()
    try:
        service = await door.start_service(pool, settings)
        try:
            first, second = await asyncio.gather(door.store(service, request), door.store(service, request))
            third = await door.store(service, request)
        finally:
            await service.stop()
    finally:
        await pool.close()
    return first, second, third


def test_a_redelivered_buffered_request_writes_nothing(fresh_db: DatabaseTarget) -> None:
    """Two writers holding the same message at once, then a redelivery after the commit: the ledger
    takes it once, and every delivery is answered with the same results (its delivery key)."""
    settings = make_settings(fresh_db)
    request = _request(orjson.dumps([telemetry(device_id=8), {"device_id": 8}]), settings, "application/json", None)
    first, second, third = asyncio.run(_store_twice(fresh_db, settings, request))
    assert [first.replayed, second.replayed].count(True) == 1 and third.replayed
    assert [r.as_dict() for r in second.results] == [r.as_dict() for r in first.results]
    assert [r.as_dict() for r in third.results] == [r.as_dict() for r in first.results]
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from ingest.raw_record").fetchone() == (2,)
        assert conn.execute("select count(*) from ingest.processed_record").fetchone() == (1,)


def test_an_idempotency_key_decides_the_buffered_request_id() -> None:
    """A retry with the same Idempotency-Key is published as the same message (and delivery key)."""
    assert door.request_id_for("order-1") == door.request_id_for("order-1")
    assert door.request_id_for("order-1") != door.request_id_for("order-2")
    assert door.is_request_id(door.request_id_for("order-1"))
    assert door.request_id_for(None) != door.request_id_for(None)


def test_clients_cannot_take_a_buffered_request_id(fresh_db: DatabaseTarget) -> None:
    """A direct-mode client's X-Request-ID becomes its rows' request id: `js-` ones are replaced."""
    with TestClient(create_app(make_settings(fresh_db))) as client:
        answer = client.post("/ingest", json=telemetry(), headers={"X-Request-ID": "js-" + "0" * 32})
    assert answer.status_code == 200
    assert not answer.headers["x-request-id"].startswith("js-")
