"""Every analytics parameter is validated at the edge: probes over a real socket against a served
process (`iot-platform serve`), then hypothesis and schemathesis over the same process. Bad input gets
422 `invalid_parameter` naming the parameter, never a 5xx, and the value is not echoed back."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ingest_service.analytics.catalog import Catalog
from tests.analytics.conftest import API_KEY, AnalyticsDb, served_models
from tests.utils.processes import running_api

pytestmark = pytest.mark.slow
SECRET = "edge-test-provision-secret-0123456789ab"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ROLLOUT = "/analytics/rollout/format_share"


@pytest.fixture(scope="module")
def base(analytics_db: AnalyticsDb) -> Iterator[str]:
    with running_api(
        analytics_db.target, SECRET, ANALYTICS_API_KEY=API_KEY, DBT_MANIFEST_PATH=str(analytics_db.manifest)
    ) as url:
        yield url


@pytest.fixture(scope="module")
def http(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def catalog(analytics_db: AnalyticsDb) -> Catalog:
    return analytics_db.catalog


def get_raw(http: httpx.Client, path_and_query: str) -> httpx.Response:
    """The query string exactly as written (%00 and all), not re-encoded by the client."""
    return http.get(httpx.URL(str(http.base_url).rstrip("/") + path_and_query))


def refused(response: httpx.Response, parameter: str | None) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["status"] == "error" and body["reason"] == "invalid_parameter" and body["detail"], body
    assert parameter in [e["parameter"] for e in body["errors"]], body
    assert all(set(e) == {"parameter", "problem", "type"} for e in body["errors"])  # the value is not echoed
    assert "\\u0000" not in response.text
    return body


def probes(catalog: Catalog) -> list[tuple[str, str | None]]:
    """(path?query, the parameter it must be refused for) for every served model and the rollout route."""
    out: list[tuple[str, str | None]] = []
    for name in served_models():
        metric = catalog.metrics[name]
        path = f"/analytics/{name}"
        for column in metric.filters:
            if metric.column(column).py_type is str:
                out += [(f"{path}?{column}=%00", column), (f"{path}?{column}=a%00b", column)]
                out.append((f"{path}?{column}={'x' * 201}", column))
        if metric.time_column is not None:
            out += [
                (f"{path}?to=0001-01-01T00:00:01", "to"),
                (f"{path}?to=9999-12-31", "to"),
                (f"{path}?from=9999-12-31T23:59:59", "from"),
                (f"{path}?from=0001-01-01T00:00:00%2B01:00", "from"),
                (f"{path}?from=-1", "from"),
                (f"{path}?from=2026-01-02&to=2026-01-01", None),
                (f"{path}?from=2026-01-01&to=2026-01-01", None),
                (f"{path}?order=sideways", "order"),
            ]
        if metric.has_device:
            out += [(f"{path}?device_id={2**64}", "device_id"), (f"{path}?device_id=-5", "device_id")]
        out += [
            (f"{path}?limit={10**30}", "limit"),
            (f"{path}?offset=-1", "offset"),
            (f"{path}?no_such_parameter=1", "no_such_parameter"),
        ]
    out += [
        (f"{ROLLOUT}?to=0001-01-01T00:00:01", "to"),
        (f"{ROLLOUT}?to=9999-12-31", "to"),
        (f"{ROLLOUT}?from=0001-01-01T00:00:00", "from"),
        (f"{ROLLOUT}?from=2000-01-01", None),  # 26 years of hours
        (f"{ROLLOUT}?granularity=day&from=2000-01-01&to=2099-01-01", None),
        (f"{ROLLOUT}?from=2026-01-02T00:00:00&to=2026-01-01T00:00:00", None),
        (f"{ROLLOUT}?granularity=minute", "granularity"),
        (f"{ROLLOUT}?from=%00", "from"),
    ]
    return out


def test_every_bad_parameter_gets_422_with_its_reason(http: httpx.Client, catalog: Catalog) -> None:
    cases = probes(catalog)
    assert len(cases) > 150
    for path, parameter in cases:
        refused(get_raw(http, path), parameter)


def test_the_probes_limits_themselves_are_served(http: httpx.Client) -> None:
    """The edges of the accepted ranges answer 200: the refusals above are the bounds, not a blanket no."""
    for path in (
        "/analytics/v_platform_extension_mm?from=2000-01-01T00:00:00&to=2100-01-01T00:00:00&device_id=9223372036854775807",
        "/analytics/fct_ingest_error_rate_daily?from=2000-01-01&to=2100-01-01&reason=%E2%9C%93",
        f"/analytics/ingest_parse?reason={'x' * 200}&limit=1000&offset=10000000",
        f"{ROLLOUT}?granularity=day&from=2000-01-01&to=2002-12-31",
        f"{ROLLOUT}?from=2026-01-01T00:00:00%2B14:00&to=2026-01-31T00:00:00%2B14:00",
    ):
        response = get_raw(http, path)
        assert response.status_code == 200, (path, response.text)


def test_not_a_parameter_problem_stays_what_it_was(http: httpx.Client) -> None:
    assert get_raw(http, "/analytics/examples/%00").json()["reason"] == "unknown_example"
    assert get_raw(http, "/analytics/no%00such").json()["reason"] == "unknown_metric"
    # Without the key: 401 before any parameter is looked at.
    assert http.get("/analytics/ingest_parse?reason=%00", headers={"Authorization": ""}).status_code == 401


# --- generated input -------------------------------------------------------------------------------

PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
any_text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(["\x00", "%", "'", "\\", "9999-12-31"])
moments = (
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
    | st.dates().map(str)
    | st.integers(-(2**70), 2**70).map(str)
    | any_text
)


@pytest.mark.timeout(300)
@PROPERTY
@given(
    name=st.sampled_from(["ingest_parse", "v_platform_extension_mm", "fct_ingest_error_rate_daily", "rollout"]),
    start=st.none() | moments,
    end=st.none() | moments,
    text=st.none() | any_text,
    device=st.none() | st.integers(-(2**70), 2**70).map(str) | any_text,
)
def test_any_parameter_values_get_200_or_422(
    http: httpx.Client, name: str, start: str | None, end: str | None, text: str | None, device: str | None
) -> None:
    if name == "rollout":
        path, params = ROLLOUT, {"from": start, "to": end, "granularity": text}
    else:
        filters = {"ingest_parse": "reason", "v_platform_extension_mm": "source_type"}
        column = filters.get(name, "payload_format")
        path, params = f"/analytics/{name}", {"from": start, "to": end, column: text, "device_id": device}
        if name == "fct_ingest_error_rate_daily":
            params.pop("device_id")
    response = http.get(path, params={k: v for k, v in params.items() if v is not None})
    assert response.status_code in (200, 422), (path, params, response.text)
    if response.status_code == 422:
        assert response.json()["reason"] == "invalid_parameter"


# Excluded: positive_data_acceptance. The OpenAPI document cannot say that a date-time must lie in
# 2000..2100 or that text holds no NUL (JSON Schema has no such keywords), so a value it allows can
# be refused 422 with its reason, by contract.
SCHEMATHESIS_EXAMPLES = 20


@pytest.mark.timeout(600)
def test_analytics_conforms_to_its_openapi_schema(base: str) -> None:
    """Generated requests for every analytics operation of the served process: no 5xx, and status
    codes, content types and bodies conform to /openapi.json."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.path.startswith("/analytics")]
    assert len(operations) == len(served_models()) + 5  # index, status, examples, one example, rollout
    calls: Counter[int] = Counter()

    for operation in operations:

        @settings(
            max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy())
        def conforms(case: Any) -> None:
            response = case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])
            assert response.status_code < 500, (case.path, case.query, response.text)
            calls[response.status_code] += 1

        conforms()
    assert calls[200] and calls[422]
    print(f"\nschemathesis: {sum(calls.values())} requests over {len(operations)} operations: {dict(calls)}")
