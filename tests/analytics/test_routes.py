"""The analytics routes answer exactly what the dbt models hold, filtered and paged as asked."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.rows import dict_row

from ingest_service.analytics.catalog import Catalog, Metric
from ingest_service.analytics.examples import EXAMPLES
from ingest_service.analytics.parameters import MAX_LIMIT
from ingest_service.analytics.schemas import row_model
from tests.analytics.conftest import AnalyticsDb, served_models


@pytest.fixture(scope="module")
def catalog(analytics_db: AnalyticsDb) -> Catalog:
    return analytics_db.catalog


def model_rows(db: psycopg.Connection, catalog: Catalog, name: str, where: str = "", params: tuple = ()) -> list[dict]:
    query = sql.SQL("select * from {}" + where).format(catalog.relation(name))
    return db.cursor(row_factory=dict_row).execute(query, params).fetchall()


def normalized(metric: Metric, rows: list[dict]) -> list[tuple]:
    """Rows as typed tuples in the model's column order (JSON and database values compare equal)."""
    model = row_model(metric)
    out = [tuple(model.model_validate(row).model_dump()[c] for c in metric.column_names) for row in rows]
    return sorted(out, key=repr)


def all_pages(api: TestClient, metric: Metric, page_size: int, **params: object) -> list[dict]:
    rows: list[dict] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        response = api.get(f"/analytics/{metric.name}", params={**params, "limit": page_size, "offset": offset})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["metric"] == metric.name and body["relation"] == f"{metric.schema}.{metric.name}"
        assert body["page"]["returned"] == len(body["rows"]) <= page_size
        rows += body["rows"]
        offset = body["page"]["next_offset"]
        pages += 1
        assert pages < 500
    return rows


@pytest.mark.parametrize("name", served_models())
def test_each_metric_route_returns_its_model_rows(
    api: TestClient, db: psycopg.Connection, catalog: Catalog, name: str
) -> None:
    metric = catalog.metrics[name]
    expected = model_rows(db, catalog, metric.name)
    assert expected, f"the test data should give {metric.name} rows"
    page_size = max(1, math.ceil(len(expected) / 4))  # several pages each
    got = all_pages(api, metric, page_size)
    assert normalized(metric, got) == normalized(metric, expected)
    assert list(got[0]) == list(metric.column_names)


def test_rows_come_in_the_metric_order(api: TestClient) -> None:
    rows = api.get("/analytics/v_platform_extension_mm", params={"limit": 1000}).json()["rows"]
    times = [r["observed_at"] for r in rows]
    assert times == sorted(times, reverse=True)  # newest first by default
    rows = api.get("/analytics/v_platform_extension_mm", params={"limit": 1000, "order": "asc"}).json()["rows"]
    assert [r["observed_at"] for r in rows] == sorted(times)
    days = [r["report_date"] for r in api.get("/analytics/fct_rollout_format_share_daily").json()["rows"]]
    assert days == sorted(days) and len(set(days)) >= 3


def test_device_filter(api: TestClient, db: psycopg.Connection, catalog: Catalog) -> None:
    for name in ("v_platform_extension_mm", "metric_side_switches", "fct_readings_hourly", "ingest_parse"):
        metric = catalog.metrics[name]
        got = all_pages(api, metric, MAX_LIMIT, device_id=4)
        assert got and {r["device_id"] for r in got} == {4}
        expected = model_rows(db, catalog, name, " where device_id = %s", (4,))
        assert normalized(metric, got) == normalized(metric, expected)


def test_time_window_is_from_inclusive_to_exclusive(api: TestClient, db: psycopg.Connection, catalog: Catalog) -> None:
    metric = catalog.metrics["v_platform_extension_mm"]
    times = sorted({r["observed_at"] for r in model_rows(db, catalog, metric.name)})
    start, end = times[10], times[30]
    got = all_pages(api, metric, MAX_LIMIT, **{"from": start.isoformat(), "to": end.isoformat()})
    expected = model_rows(db, catalog, metric.name, " where observed_at >= %s and observed_at < %s", (start, end))
    assert normalized(metric, got) == normalized(metric, expected)
    assert min(r["observed_at"] for r in expected) == start and len({r["observed_at"] for r in expected}) == 20
    # A time without an offset is UTC.
    naive = start.astimezone(UTC).replace(tzinfo=None).isoformat()
    again = all_pages(api, metric, MAX_LIMIT, **{"from": naive, "to": end.isoformat()})
    assert normalized(metric, again) == normalized(metric, expected)


def test_date_window_and_text_filters(api: TestClient, db: psycopg.Connection, catalog: Catalog) -> None:
    metric = catalog.metrics["fct_rollout_format_share_daily"]
    days = sorted({r["report_date"] for r in model_rows(db, catalog, metric.name)})
    got = all_pages(api, metric, 10, **{"from": days[1].isoformat(), "payload_format": "new"})
    expected = model_rows(db, catalog, metric.name, " where report_date >= %s and payload_format = 'new'", (days[1],))
    assert expected and normalized(metric, got) == normalized(metric, expected)

    parse = catalog.metrics["ingest_parse"]
    errors = all_pages(api, parse, 100, outcome="error")
    assert errors and normalized(parse, errors) == normalized(
        parse, model_rows(db, catalog, "ingest_parse", " where outcome = 'error'")
    )
    assert {r["reason"] for r in errors} >= {"wrong_type", "value_out_of_range", "unknown_event_type"}


def test_pagination_bounds(api: TestClient) -> None:
    path = "/analytics/v_platform_extension_mm"
    for params in ({"limit": 0}, {"limit": MAX_LIMIT + 1}, {"offset": -1}, {"limit": "ten"}, {"device_id": 0}):
        response = api.get(path, params=params)
        assert response.status_code == 422, params
        body = response.json()
        assert body["reason"] == "invalid_parameter" and [e["parameter"] for e in body["errors"]] == list(params)
    body = api.get(path, params={"limit": MAX_LIMIT}).json()
    assert body["page"] == {"limit": MAX_LIMIT, "offset": 0, "returned": len(body["rows"]), "next_offset": None}
    assert api.get(path).json()["page"]["limit"] == 100  # the default page
    first = api.get(path, params={"limit": 5}).json()
    assert first["page"]["next_offset"] == 5 and len(first["rows"]) == 5
    beyond = api.get(path, params={"offset": 1_000_000}).json()
    assert beyond["rows"] == [] and beyond["page"]["next_offset"] is None
    assert api.get(path, params={"from": "yesterday"}).status_code == 422
    assert api.get("/analytics/fct_rollout_device_state_daily", params={"from": "2026-13-01"}).status_code == 422


def test_filters_are_not_sql(api: TestClient) -> None:
    """Filter values are bound parameters, never spliced; an unknown parameter or model is refused."""
    response = api.get("/analytics/ingest_parse", params={"reason": "x' or '1'='1", "order": "asc"})
    assert response.status_code == 200 and response.json()["rows"] == []
    assert api.get("/analytics/ingest_parse", params={"order": "asc; drop table x"}).status_code == 422
    unknown = api.get("/analytics/ingest_parse", params={"reasons": "x"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["type"] == "extra_forbidden"
    response = api.get("/analytics/no_such_metric")
    assert response.status_code == 404 and response.json()["reason"] == "unknown_metric"


def test_index_lists_every_metric(api: TestClient, catalog: Catalog) -> None:
    body = api.get("/analytics/").json()
    assert [m["name"] for m in body["metrics"]] == served_models() == list(catalog.metrics)
    assert body["max_limit"] == MAX_LIMIT


def test_examples_list(api: TestClient) -> None:
    body = api.get("/analytics/examples").json()
    names = [e["name"] for e in body["examples"]]
    assert names == [
        "counts_by_type",
        "devices_both_formats",
        "unified_recent",
        "averages_compared",
        "side_switches",
        "side_switches_last_hour",
    ]
    for example in body["examples"]:
        assert example["title"] and example["description"] and "select" in example["sql"]
        assert example["path"] == f"/analytics/examples/{example['name']}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_each_example_runs_its_sql(api: TestClient, db: psycopg.Connection, catalog: Catalog, example) -> None:
    body = api.get(f"/analytics/examples/{example.name}").json()
    assert body["name"] == example.name and body["sql"] == example.sql
    # The SQL as shown runs as is where the models live.
    metric = catalog.metrics[example.reads[0]]
    db.execute(sql.SQL("set search_path = {}").format(sql.Identifier(metric.schema)))
    cur = db.cursor(row_factory=dict_row).execute(example.sql)
    expected = cur.fetchall()
    assert body["columns"] == [d.name for d in cur.description]
    assert expected and body["row_count"] == len(expected) == len(body["rows"]) and not body["truncated"]
    model = row_model(metric)
    shared = [c for c in body["columns"] if c in model.model_fields]

    def typed(rows: list[dict]) -> list[tuple]:
        return [tuple(model.model_validate({c: r[c] for c in shared}).model_dump()[c] for c in shared) for r in rows]

    assert typed(body["rows"]) == typed(expected)  # same rows, same order


def test_examples_equal_the_models(api: TestClient, db: psycopg.Connection, catalog: Catalog) -> None:
    switches = {r["device_id"]: r for r in api.get("/analytics/examples/side_switches").json()["rows"]}
    for row in model_rows(db, catalog, "metric_side_switches"):
        assert switches[row["device_id"]]["total_side_switches"] == row["total_side_switches"]
    last_hour = api.get("/analytics/examples/side_switches_last_hour").json()["rows"]
    assert {r["device_id"]: r["total_side_switches"] for r in last_hour}.get(6) == 2
    counts = api.get("/analytics/examples/counts_by_type").json()["rows"]
    assert sum(r["reading_share"] for r in counts) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["nope", "side_switches;select 1", "SIDE_SWITCHES", "select * from ingest.raw_record"])
def test_unknown_example_is_404(api: TestClient, name: str) -> None:
    response = api.get(f"/analytics/examples/{name}")
    assert response.status_code == 404
    assert response.json()["reason"] == "unknown_example"


def test_rollout_hourly_series_aggregates_the_rollup(api: TestClient, db: psycopg.Connection, catalog: Catalog) -> None:
    """The hourly share mart, through the route, equals an aggregation of the hourly rollup done here."""
    now = datetime.now(UTC)
    body = api.get("/analytics/rollout/format_share", params={"granularity": "hour"}).json()
    assert body["source"] == "fct_rollout_format_share_hourly"
    devices: dict[tuple, set] = defaultdict(set)
    readings: dict[tuple, int] = defaultdict(int)
    for row in model_rows(
        db,
        catalog,
        "fct_readings_hourly",
        " where measure = 'platform_extension' and hour_start >= %s",
        (now - timedelta(hours=48),),
    ):
        devices[row["hour_start"], row["payload_format"]].add(row["device_id"])
        readings[row["hour_start"], row["payload_format"]] += row["reading_count"]
    got = {(datetime.fromisoformat(p["bucket_start"]), p["payload_format"]): p for p in body["points"]}
    assert set(got) == set(readings)
    for key, point in got.items():
        total = sum(v for (hour, _), v in readings.items() if hour == key[0])
        both = set().union(*(d for (hour, _), d in devices.items() if hour == key[0]))
        assert (point["devices"], point["readings"]) == (len(devices[key]), readings[key])
        assert point["reading_share"] == pytest.approx(readings[key] / total)
        assert point["device_share"] == pytest.approx(len(devices[key]) / len(both))


def test_rollout_daily_series_is_the_daily_model(api: TestClient, db: psycopg.Connection, catalog: Catalog) -> None:
    body = api.get("/analytics/rollout/format_share", params={"granularity": "day"}).json()
    assert body["source"] == "fct_rollout_format_share_daily"
    expected = model_rows(db, catalog, "fct_rollout_format_share_daily")
    got = {(p["bucket_start"], p["payload_format"]): p["device_share"] for p in body["points"]}
    assert got == {(r["report_date"].isoformat(), r["payload_format"]): r["device_share"] for r in expected}
