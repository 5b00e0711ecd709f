"""Property-based tests: hypothesis over the event schema and over any JSON value or byte string, and
schemathesis over the service's own OpenAPI document. No 5xx; every item gets exactly one outcome;
valid events are stored as facts with their native values."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ingest_service.core.database import DatabaseTarget
from ingest_service.main import create_app
from tests.ingest_service.conftest import make_settings
from tests.security.ledger_checks import check_answer_shape, check_stored

EXAMPLES = 80
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
RANGES = {
    "platform_extension_ticks": (0, 3000),
    "platform_extension_mm": (-150, 150),
    "battery_charge": (0, 100),
    "platform_height_mm": (0, 200),
}
EPOCH_2000 = 946_684_800.0
NOW = time.time()


@pytest.fixture(scope="module")
def prop_client(module_db: DatabaseTarget) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(module_db))) as client:
        yield client


@pytest.fixture(scope="module")
def prop_ledger(module_db: DatabaseTarget) -> Iterator[psycopg.Connection]:
    with psycopg.connect(module_db.url, autocommit=True) as conn:
        yield conn


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    event_type = draw(st.sampled_from(sorted(RANGES)))
    low, high = RANGES[event_type]
    value = draw(st.integers(low, high) | st.floats(low, high, allow_nan=False, allow_infinity=False))
    return {
        "device_id": draw(st.integers(1, 2**31 - 1)),
        "event_type": event_type,
        "value": value,
        "timestamp": draw(st.floats(EPOCH_2000, NOW, allow_nan=False)),
    }


@pytest.mark.timeout(120)
@PROPERTY
@given(events=st.lists(valid_events(), min_size=1, max_size=20))
def test_valid_events_are_stored_as_facts_with_native_values(
    prop_client: TestClient, prop_ledger: psycopg.Connection, events: list[dict[str, Any]]
) -> None:
    response = prop_client.post("/ingest", json=events)
    assert response.status_code == 200
    results = response.json()
    assert [r["status"] for r in results if r["status"] not in ("ok", "duplicate")] == []
    check_stored(prop_ledger, results, events)
    facts = {
        row[0]: row[1:]
        for row in prop_ledger.execute(
            """select p.id, p.device_id, t.name, p.value, extract(epoch from p.record_time)::float8
               from ingest.processed_record p join ingest.record_type t on t.id = p.record_type_id
               where p.id = any(%s)""",
            ([r["processed_id"] for r in results],),
        )
    }
    for event, result in zip(events, results, strict=True):
        device_id, name, value, epoch = facts[result["processed_id"]]
        assert (device_id, name, value) == (event["device_id"], event["event_type"], float(event["value"]))
        assert math.isclose(epoch, event["timestamp"], abs_tol=2e-6)  # timestamptz keeps microseconds


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None, categories=None), max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "device_id": json_values | st.integers(-(2**70), 2**70),
        "event_type": st.sampled_from([*RANGES, "device_startup", "nope"]) | json_values,
        "value": json_values | st.floats(-1e4, 1e4),
        "timestamp": json_values | st.floats(0, 2 * NOW),
        "serial": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,70}", fullmatch=True) | json_values,
        "provision_token": st.text(max_size=70) | json_values,
        "firmware": json_values,
    },
)


@pytest.mark.timeout(120)
@PROPERTY
@given(value=event_like | json_values | st.lists(event_like | json_values, min_size=1, max_size=10))
def test_any_json_value_gets_one_outcome_per_item(
    prop_client: TestClient, prop_ledger: psycopg.Connection, value: Any
) -> None:
    body = json.dumps(value).encode()  # escapes lone surrogates; Infinity stays out (allow_nan=False above)
    response = prop_client.post("/ingest", content=body, headers={"content-type": "application/json"})
    payload = response.json()
    check_answer_shape(response.status_code, payload)
    assert response.status_code in (200, 401, 422, 429)
    if isinstance(value, list) and value:
        assert isinstance(payload, list) and len(payload) == len(value), (body[:500], payload)
        check_stored(prop_ledger, payload, value)
    else:
        check_stored(prop_ledger, [payload], [body])


@pytest.mark.timeout(120)
@PROPERTY
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from(["application/json", "application/x-ndjson", "text/plain", "", "a/b; c=d"]),
)
def test_any_bytes_get_a_non_5xx_answer_and_are_kept(
    prop_client: TestClient, prop_ledger: psycopg.Connection, body: bytes, content_type: str
) -> None:
    response = prop_client.post("/ingest", content=body, headers={"content-type": content_type})
    payload = response.json()
    check_answer_shape(response.status_code, payload)
    results = payload if isinstance(payload, list) else [payload]
    check_stored(prop_ledger, results, None)


# --- schemathesis: the service against its own OpenAPI document -------------------------------------


# Excluded: positive_data_acceptance. The schema describes an event's shape; whether a well-shaped event
# is stored depends on data (record_type ranges, provisioned device ids, the HMAC token, the clock), and
# a well-shaped event outside them is answered 422/401 with its reason, by contract.
OWN_PATHS = ("/ingest", "/healthz", "/readyz", "/metrics")  # the ingest service's operations
SCHEMATHESIS_EXAMPLES = 50


@pytest.mark.timeout(180)
def test_api_conforms_to_its_openapi_schema(module_db: DatabaseTarget) -> None:
    """Generated requests for every ingest operation: no 5xx, and status codes, content types, headers
    and bodies conform to /openapi.json (schemathesis' default checks)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(make_settings(module_db)))
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path in OWN_PATHS]
    assert {op.path for op in operations} == set(OWN_PATHS)
    calls: list[int] = []

    for operation in operations:

        @settings(
            max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def conforms(case: Any) -> None:
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            assert response.status_code < 500 or response.status_code == 503
            calls.append(response.status_code)

        conforms()
    print(f"\nschemathesis: {len(calls)} generated requests over {len(operations)} operations: {Counter(calls)}")
