"""Observability: JSON logs carry the request id, echoed in X-Request-ID and stored with the ledger
rows; /metrics counts every outcome and reason."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ingest_service.core.database import DatabaseTarget
from ingest_service.core.logging import JsonFormatter, access_log
from ingest_service.main import create_app
from tests.ingest_service.conftest import SECRET, make_settings
from tests.utils.events import startup, telemetry


@pytest.fixture
def client(fresh_db: DatabaseTarget) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(fresh_db, log_level="INFO"))) as test_client:
        yield test_client


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the service logs, formatted as in production (LOG_LEVEL=INFO)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    level = access_log.level
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    yield stream
    access_log.removeHandler(handler)
    access_log.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_request_id_is_echoed_logged_and_stored(
    client: TestClient, json_log: io.StringIO, fresh_db: DatabaseTarget
) -> None:
    given = client.post("/ingest", json=telemetry(device_id=1), headers={"X-Request-ID": "edge-7f3a"})
    assert given.status_code == 200
    assert given.headers.get_list("x-request-id") == ["edge-7f3a"]  # once: the middleware owns the header
    made = client.post("/ingest", json={"device_id": 1})
    made_id = made.headers["x-request-id"]
    assert len(made_id) == 32 and int(made_id, 16) >= 0 and made_id != "edge-7f3a"
    for bad in (b"x" * 65, "caf\u00e9".encode(), b"a\tb"):  # too long; not ASCII; not printable
        replaced = client.get("/healthz", headers={"X-Request-ID": bad})
        assert len(replaced.headers["x-request-id"]) == 32

    lines = _lines(json_log)
    access = [line for line in lines if line["message"] == "request" and line["path"] == "/ingest"]
    assert [(line["request_id"], line["status"]) for line in access] == [("edge-7f3a", 200), (made_id, 422)]
    assert all({"ts", "level", "logger", "method", "duration_ms"} <= line.keys() for line in access)
    with psycopg.connect(fresh_db.url) as conn:
        stored = conn.execute("select request_id from ingest.raw_record order by id").fetchall()
    assert stored == [("edge-7f3a",), (made_id,)]


def _metrics(client: TestClient) -> tuple[Counter, Counter]:
    items: Counter = Counter()
    requests: Counter = Counter()
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "ingest_items_total":
                items[(sample.labels["status"], sample.labels["reason"])] += sample.value
            elif sample.name == "ingest_requests_total":
                requests[sample.labels["status_code"]] += sample.value
    return items, requests


def test_metrics_count_every_outcome_and_reason(client: TestClient) -> None:
    items_before, requests_before = _metrics(client)
    event = telemetry(device_id=3, value=5)
    batch = [
        event,
        event,
        telemetry(device_id=3, value=6),
        {"device_id": 3},
        telemetry(event_type="nope"),
        telemetry(value=999),
        "junk",
        startup(SECRET, "SN-MET"),
        startup("wrong", "SN-MET-2"),
    ]
    assert client.post("/ingest", json=batch).status_code == 200
    assert client.post("/ingest", content=b"not json").status_code == 422
    assert client.post("/ingest", content=b"x", headers={"content-encoding": "br"}).status_code == 415
    items_after, requests_after = _metrics(client)

    items = {key: items_after[key] - items_before[key] for key in items_after}
    assert {key: n for key, n in items.items() if n} == {
        ("ok", ""): 2,
        ("duplicate", ""): 1,
        ("provisioned", ""): 1,
        ("invalid", "missing_field"): 1,
        ("invalid", "unknown_event_type"): 1,
        ("invalid", "value_out_of_range"): 1,
        ("invalid", "not_an_object"): 1,
        ("invalid", "invalid_json"): 1,
        ("unauthorized", "invalid_token"): 1,
    }
    requests = {code: requests_after[code] - requests_before[code] for code in requests_after}
    assert {code: n for code, n in requests.items() if n} == {"200": 1, "422": 1, "415": 1}
