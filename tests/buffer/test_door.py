"""The JetStream door's calls into the write path, on a real PostgreSQL (no NATS needed): a message
decodes to what the HTTP route makes of the same body, and the results read back from the ledger
by request id (receipts, redelivery checks) are exactly what the write path answered."""

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
    meta = door.RequestMeta(door.REQUEST_ID_PREFIX + new_request_id(), content_type, encoding, "10.0.0.9")
    headers = door.message_headers(meta.request_id, meta, time.time())
    return door.decode(headers, items_body, settings)


async def _store_and_read(target: DatabaseTarget, settings: Settings, requests: list[door.BufferedRequest]):
    pool = write_pool(settings, target.url)
    await pool.open()
    try:
        service = await door.start_service(pool, settings)
        try:
            answered = [await door.store(service, request) for request in requests]
        finally:
            await service.stop()
        async with pool.connection() as conn:
            stored = await door.stored_results(conn, [r.request_id for r in requests] + ["js-" + "0" * 32])
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
    assert request.meta.content_encoding == "gzip" and request.meta.remote_addr == "10.0.0.9"


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
    pool = write_pool(settings, target.url)
    await pool.open()
    try:
        service = await door.start_service(pool, settings)
        try:
            first = await door.store(service, request)
            with pytest.raises(door.DatabaseUnavailable):
                await door.store(service, request)
        finally:
            await service.stop()
        async with pool.connection() as conn:
            stored = await door.stored_results(conn, [request.request_id])
    finally:
        await pool.close()
    return first, stored[request.request_id]


def test_a_second_write_of_a_buffered_request_is_refused(fresh_db: DatabaseTarget) -> None:
    """Two writers holding the same message at once: the ledger takes it once (migration 0004)."""
    settings = make_settings(fresh_db)
    request = _request(orjson.dumps([telemetry(device_id=8), {"device_id": 8}]), settings, "application/json", None)
    first, stored = asyncio.run(_store_twice(fresh_db, settings, request))
    assert [r.as_dict() for r in stored] == [r.as_dict() for r in first]
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from ingest.raw_record").fetchone() == (2,)


def test_clients_cannot_take_a_buffered_request_id(fresh_db: DatabaseTarget) -> None:
    """A direct-mode client's X-Request-ID becomes its rows' request id: `js-` ones are replaced."""
    with TestClient(create_app(make_settings(fresh_db))) as client:
        answer = client.post("/ingest", json=telemetry(), headers={"X-Request-ID": "js-" + "0" * 32})
    assert answer.status_code == 200
    assert not answer.headers["x-request-id"].startswith("js-")
