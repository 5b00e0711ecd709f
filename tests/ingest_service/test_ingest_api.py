"""POST /ingest against a real PostgreSQL: every status and reason, and the ledger invariants."""

from __future__ import annotations

import gzip
import time

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.ingest_service.conftest import SECRET
from tests.utils.events import startup, telemetry
from tests.utils.ledger import assert_one_outcome_per_raw_row, ledger

LEGACY_MAX = 2**31 - 1


def counts(db: psycopg.Connection) -> dict[str, int]:
    c = ledger(db)
    return {"raw": c.raw_rows, "facts": c.facts, "duplicates": c.duplicates, "startups": c.startups, "errors": c.errors}


def test_ingest_single_event_stores_raw_and_fact(client: TestClient, db: psycopg.Connection) -> None:
    event = telemetry(device_id=7, event_type="platform_extension_ticks", value=1500)
    response = client.post("/ingest", json=event)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["processed_id"] is not None
    raw = db.execute("select payload from ingest.raw_record where id = %s", (body["raw_id"],)).fetchone()
    assert raw is not None and raw[0] == event
    fact = db.execute(
        """select p.device_id, t.name, p.value, extract(epoch from p.record_time)
           from ingest.processed_record p join ingest.record_type t on t.id = p.record_type_id
           where p.id = %s""",
        (body["processed_id"],),
    ).fetchone()
    assert fact is not None
    # native units at rest: ticks stay ticks
    assert fact[:3] == (7, "platform_extension_ticks", 1500.0)
    assert abs(float(fact[3]) - event["timestamp"]) < 1e-5
    assert response.headers["x-request-id"]


def test_ingest_replay_is_duplicate_not_new_fact(client: TestClient, db: psycopg.Connection) -> None:
    event = telemetry(device_id=3, value=-40)
    first = client.post("/ingest", json=event).json()
    second = client.post("/ingest", json=event).json()
    assert second["status"] == "duplicate"
    assert second["processed_id"] == first["processed_id"]
    assert second["raw_id"] != first["raw_id"]
    assert counts(db) == {"raw": 2, "facts": 1, "duplicates": 1, "startups": 0, "errors": 0}
    assert_one_outcome_per_raw_row(db)


def test_ingest_stream_twice_adds_no_facts(client: TestClient, db: psycopg.Connection) -> None:
    base = time.time() - 100
    stream = [telemetry(device_id=i % 5 + 1, value=i % 150, timestamp=base + i) for i in range(200)]
    client.post("/ingest", json=stream)
    after_first = counts(db)
    results = client.post("/ingest", json=stream).json()
    assert {r["status"] for r in results} == {"duplicate"}
    after_second = counts(db)
    assert after_second["facts"] == after_first["facts"] == 200
    assert after_second["raw"] == 400 and after_second["duplicates"] == 200
    assert_one_outcome_per_raw_row(db)


def test_ingest_batch_keeps_order_and_mixes_outcomes(client: TestClient, db: psycopg.Connection) -> None:
    batch = [
        telemetry(device_id=1, value=10),
        {},
        {"event_type": "battery_charge", "value": "high"},
        telemetry(device_id=2, event_type="battery_charge", value=55.5),
        startup(SECRET, "SN-ABC"),
        startup("wrong-secret", "SN-EVIL"),
    ]
    response = client.post("/ingest", json=batch)
    assert response.status_code == 200
    results = response.json()
    assert [r["status"] for r in results] == ["ok", "invalid", "invalid", "ok", "provisioned", "unauthorized"]
    assert [r.get("reason") for r in results] == [None, "missing_field", "missing_field", None, None, "invalid_token"]
    assert len({r["raw_id"] for r in results}) == 6
    assert results[4]["device_id"] > LEGACY_MAX
    assert counts(db) == {"raw": 6, "facts": 2, "duplicates": 0, "startups": 1, "errors": 3}
    assert_one_outcome_per_raw_row(db)


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"device_id": 1}, "missing_field"),
        ({"device_id": 1, "value": 123}, "missing_field"),
        (telemetry(event_type="warp_drive_mm"), "unknown_event_type"),
        (telemetry(event_type=42), "wrong_type"),
        (telemetry(value="high"), "wrong_type"),
        (telemetry(value=True), "wrong_type"),
        (telemetry(device_id="abc"), "wrong_type"),
        (telemetry(device_id=1.5), "wrong_type"),
        (telemetry(value=151), "value_out_of_range"),
        (telemetry(event_type="platform_extension_ticks", value=-1), "value_out_of_range"),
        (telemetry(event_type="battery_charge", value=100.01), "value_out_of_range"),
        (telemetry(timestamp="2024-01-01T00:00:00Z"), "wrong_type"),
        (telemetry(timestamp=12345), "timestamp_too_old"),
        (telemetry(timestamp=time.time() + 3600), "timestamp_in_future"),
        (telemetry(device_id=0), "device_id_out_of_range"),
        (telemetry(device_id=-5), "device_id_out_of_range"),
        (telemetry(device_id=2**63), "device_id_out_of_range"),
        (telemetry(device_id=2**40), "unknown_device"),
        ([1, 2], None),
        ("just a string", "not_an_object"),
    ],
)
def test_ingest_invalid_event_gets_reason_and_is_stored(
    client: TestClient, db: psycopg.Connection, event: object, reason: str | None
) -> None:
    response = client.post("/ingest", json=event)
    if reason is None:  # an array of non-objects: a batch of invalid items
        results = response.json()
        assert response.status_code == 200
        assert {r["reason"] for r in results} == {"not_an_object"}
        return
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == "invalid"
    assert body["reason"] == reason
    assert body["detail"]
    stored = db.execute(
        "select e.reason, e.detail from ingest.ingest_error e where e.raw_record_id = %s", (body["raw_id"],)
    ).fetchone()
    assert stored == (reason, body["detail"])
    assert counts(db)["facts"] == 0


def test_ingest_nan_timestamp_is_rejected_and_kept(client: TestClient, db: psycopg.Connection) -> None:
    body = b'{"device_id": 1, "event_type": "platform_extension_mm", "value": 1, "timestamp": NaN}'
    response = client.post("/ingest", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["reason"] == "invalid_json"
    stored = db.execute("select body_text from ingest.raw_record").fetchone()
    assert stored == (body.decode(),)


def test_ingest_not_json_is_stored_with_reason(client: TestClient, db: psycopg.Connection) -> None:
    response = client.post("/ingest", content=b"temperature=high", headers={"content-type": "text/plain"})
    assert response.status_code == 422
    body = response.json()
    assert (body["status"], body["reason"]) == ("invalid", "invalid_json")
    row = db.execute(
        "select payload, body_text, content_type from ingest.raw_record where id = %s", (body["raw_id"],)
    ).fetchone()
    assert row == (None, "temperature=high", "text/plain")


def test_ingest_invalid_utf8_is_kept_as_bytes(client: TestClient, db: psycopg.Connection) -> None:
    response = client.post("/ingest", content=b'{"a": "\xff\xfe"}')
    assert response.status_code == 422
    row = db.execute("select body_bytes from ingest.raw_record where id = %s", (response.json()["raw_id"],)).fetchone()
    assert row is not None and bytes(row[0]) == b'{"a": "\xff\xfe"}'


def test_ingest_ndjson_and_gzip(client: TestClient, db: psycopg.Connection) -> None:
    lines = [orjson.dumps(telemetry(device_id=i, value=i)) for i in range(1, 4)] + [b"{broken"]
    body = gzip.compress(b"\n".join(lines) + b"\n")
    response = client.post(
        "/ingest", content=body, headers={"content-type": "application/x-ndjson", "content-encoding": "gzip"}
    )
    assert response.status_code == 200
    results = response.json()
    assert [r["status"] for r in results] == ["ok", "ok", "ok", "invalid"]
    assert results[3]["reason"] == "invalid_json"
    rows = db.execute("select content_encoding, body_text from ingest.raw_record order by batch_index").fetchall()
    assert rows[0][0] == "gzip"
    assert rows[3][1] == "{broken"


def test_ingest_gzip_bomb_is_refused_and_nothing_stored(fresh_db, db: psycopg.Connection) -> None:
    from fastapi.testclient import TestClient as Client

    from ingest_service.main import create_app
    from tests.ingest_service.conftest import make_settings

    bomb = gzip.compress(b"[" + b" " * (8 * 1024 * 1024) + b"]")
    with Client(create_app(make_settings(fresh_db, max_inflated_bytes=1024 * 1024))) as c:
        response = c.post("/ingest", content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413
    assert response.json()["reason"] == "inflated_too_large"
    assert response.json()["stored"] is False
    assert counts(db)["raw"] == 0


def test_ingest_oversize_and_unsupported_encoding_store_nothing(fresh_db, db: psycopg.Connection) -> None:
    from fastapi.testclient import TestClient as Client

    from ingest_service.main import create_app
    from tests.ingest_service.conftest import make_settings

    with Client(create_app(make_settings(fresh_db, max_body_bytes=1000, max_batch_items=3))) as c:
        big = c.post("/ingest", content=b"[" + b" " * 2000 + b"]")
        assert (big.status_code, big.json()["reason"]) == (413, "body_too_large")
        many = c.post("/ingest", json=[telemetry(device_id=1)] * 4)
        assert (many.status_code, many.json()["reason"]) == (413, "too_many_items")
        brotli = c.post("/ingest", content=b"xx", headers={"content-encoding": "br"})
        assert (brotli.status_code, brotli.json()["reason"]) == (415, "unsupported_encoding")
    assert counts(db)["raw"] == 0


def test_ingest_empty_body_and_empty_batch_are_stored_errors(client: TestClient, db: psycopg.Connection) -> None:
    empty = client.post("/ingest", content=b"")
    assert (empty.status_code, empty.json()["reason"]) == (422, "empty_body")
    no_items = client.post("/ingest", json=[])
    assert (no_items.status_code, no_items.json()["reason"]) == (422, "empty_batch")
    assert counts(db) == {"raw": 2, "facts": 0, "duplicates": 0, "startups": 0, "errors": 2}


def test_legacy_device_is_created_lazily(client: TestClient, db: psycopg.Connection) -> None:
    assert db.execute("select count(*) from ingest.device").fetchone() == (0,)
    client.post("/ingest", json=telemetry(device_id=42, event_type="platform_extension_ticks", value=10))
    row = db.execute("select id, origin, serial from ingest.device").fetchone()
    assert row == (42, "legacy", None)


def test_startup_provisions_device_and_is_idempotent(client: TestClient, db: psycopg.Connection) -> None:
    first = client.post("/ingest", json=startup(SECRET, "SN-NEW-1"))
    assert first.status_code == 200
    device_id = first.json()["device_id"]
    assert device_id > LEGACY_MAX  # provisioned ids never collide with legacy ids
    again = client.post("/ingest", json=startup(SECRET, "SN-NEW-1", firmware="2.0.1"))
    assert again.json()["device_id"] == device_id
    other = client.post("/ingest", json=startup(SECRET, "SN-NEW-2")).json()["device_id"]
    assert other != device_id
    assert db.execute("select firmware, origin from ingest.device where id = %s", (device_id,)).fetchone() == (
        "2.0.1",
        "provisioned",
    )
    # the provisioned device can now report telemetry under its id
    reading = client.post("/ingest", json=telemetry(device_id=device_id, value=-3))
    assert reading.json()["status"] == "ok"


def test_upgraded_legacy_device_keeps_its_id(client: TestClient, db: psycopg.Connection) -> None:
    client.post("/ingest", json=telemetry(device_id=5, event_type="platform_extension_ticks", value=300))
    response = client.post("/ingest", json=startup(SECRET, "SN-000005", device_id=5))
    assert response.status_code == 200
    assert response.json()["device_id"] == 5
    client.post("/ingest", json=telemetry(device_id=5, event_type="platform_extension_mm", value=-15))
    row = db.execute("select serial, firmware, provisioned_at is not null from ingest.device where id = 5").fetchone()
    assert row == ("SN-000005", "2.0.0", True)
    upgraded = db.execute("select upgraded_legacy from ingest.device_startup").fetchone()
    assert upgraded == (True,)
    types = db.execute(
        "select count(distinct record_type_id) from ingest.processed_record where device_id = 5"
    ).fetchone()
    assert types == (2,)
    # the serial now belongs to device 5: another device cannot claim it
    conflict = client.post("/ingest", json=startup(SECRET, "SN-000005", device_id=6))
    assert (conflict.status_code, conflict.json()["reason"]) == (422, "serial_conflict")


def test_startup_with_bad_token_is_401_and_stored(client: TestClient, db: psycopg.Connection) -> None:
    event = startup("not-the-secret", "SN-X")
    response = client.post("/ingest", json=event)
    assert response.status_code == 401
    assert response.json()["reason"] == "invalid_token"
    assert db.execute("select count(*) from ingest.device").fetchone() == (0,)
    assert db.execute("select reason from ingest.ingest_error").fetchone() == ("invalid_token",)


def test_new_record_type_is_data_not_code(client: TestClient, db: psycopg.Connection) -> None:
    event = telemetry(event_type="motor_temperature_c", value=40)
    assert client.post("/ingest", json=event).json()["reason"] == "unknown_event_type"
    db.execute(
        """insert into ingest.record_type (id, name, unit, min_value, max_value, payload_format, measure)
           values (10, 'motor_temperature_c', 'celsius', -40, 125, 'common', 'motor_temperature')"""
    )
    time.sleep(1.1)  # the catalog reloads on a miss at most once a second
    assert client.post("/ingest", json=event).json()["status"] == "ok"


def test_ingest_database_down_is_503_with_retry_after(pg_server) -> None:
    from ingest_service.core.config import Settings
    from ingest_service.main import create_app

    settings = Settings(
        dev_mode=True, database_url="postgresql://postgres@127.0.0.1:1/nowhere", request_timeout_seconds=1.0
    )
    with TestClient(create_app(settings)) as c:
        response = c.post("/ingest", json=telemetry())
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["stored"] is False
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200


def test_health_ready_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "detail": None}
    assert client.get("/readyz").status_code == 200
    client.post("/ingest", json=[telemetry(), {"device_id": 1}])
    text = client.get("/metrics").text
    assert 'ingest_items_total{reason="missing_field",status="invalid"}' in text
    assert "ingest_request_duration_seconds_bucket" in text
    schema = client.get("/openapi.json").json()
    assert "/ingest" in schema["paths"]
    assert "TelemetryEvent" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200
