"""Who may read analytics: the bearer key, and the analyst role the routes read through."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from ingest_service.analytics.reader import connection_kwargs
from ingest_service.core.database import DatabaseTarget
from ingest_service.main import create_app
from tests.analytics.conftest import API_KEY, AnalyticsDb, analytics_settings, ensure_analyst_role
from tests.utils.events import telemetry

PATHS = ["/analytics/", "/analytics/examples", "/analytics/examples/side_switches", "/analytics/metric_side_switches"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Bearer {API_KEY}x"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": API_KEY},
        {"X-API-Key": API_KEY},
    ],
    ids=["missing", "wrong", "longer", "basic", "no-scheme", "other-header"],
)
def test_analytics_refuses_without_the_key(api: TestClient, path: str, headers: dict[str, str]) -> None:
    response = api.get(path, headers={"Authorization": "", **headers})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["reason"] == "unauthorized"
    assert API_KEY not in response.text


def test_the_key_opens_analytics_and_ingest_needs_none(api: TestClient) -> None:
    assert api.get("/analytics/metric_side_switches", headers={"Authorization": f"bearer {API_KEY}"}).status_code == 200
    response = api.post("/ingest", json=telemetry(device_id=77), headers={"Authorization": ""})
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert api.get("/healthz", headers={"Authorization": ""}).status_code == 200


def test_dashboard_page_needs_no_key(api: TestClient) -> None:
    response = api.get("/dashboard", headers={"Authorization": ""})
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    for asset in ("dashboard.js", "dashboard.css", "chart.umd.min.js"):
        assert api.get(f"/dashboard/assets/{asset}").status_code == 200
    assert api.get("/dashboard/assets/..%2F..%2Fcore%2Fconfig.py").status_code == 404
    assert api.get("/dashboard/assets/index.html").status_code == 404


def _client(target: DatabaseTarget, **overrides: object) -> TestClient:
    return TestClient(create_app(analytics_settings(target, **overrides)))


def test_dev_mode_without_a_key_is_open(analytics_db: AnalyticsDb) -> None:
    with _client(analytics_db.target, analytics_api_key=None) as client:
        assert client.get("/analytics/metric_side_switches").status_code == 200


def test_production_without_a_key_refuses_analytics_only(analytics_db: AnalyticsDb) -> None:
    overrides = {
        "analytics_api_key": None,
        "dev_mode": False,
        "provision_secret": "a-real-provision-secret-of-32-bytes-or-more",
    }
    with _client(analytics_db.target, **overrides) as client:
        response = client.get("/analytics/metric_side_switches", headers={"Authorization": "Bearer anything"})
        assert response.status_code == 503 and response.json()["reason"] == "analytics_not_configured"
        assert client.post("/ingest", json=telemetry(device_id=78)).status_code == 200


def test_placeholder_key_is_refused_outside_dev_mode() -> None:
    with pytest.raises(ValidationError, match="ANALYTICS_API_KEY"):
        analytics_settings(
            DatabaseTarget("postgresql://x@/y", False),
            dev_mode=False,
            provision_secret="a-real-provision-secret-of-32-bytes-or-more",
            analytics_api_key="changeme",
        )


# --- the analyst role ---------------------------------------------------------------------------


@pytest.fixture
def analyst(analytics_db: AnalyticsDb) -> Iterator[psycopg.Connection]:
    """A connection exactly as the analytics pool opens them (role, read-only, search_path)."""
    kwargs = {**connection_kwargs(analytics_settings(analytics_db.target)), "autocommit": False}
    with psycopg.connect(analytics_db.target.url, **kwargs) as conn:
        assert conn.execute("select current_user").fetchone() == ("iot_analyst",)
        conn.rollback()
        yield conn


def test_analyst_reads_analytics(analyst: psycopg.Connection) -> None:
    assert analyst.execute("show transaction_read_only").fetchone() == ("on",)
    assert analyst.execute("select count(*) from metric_side_switches").fetchone()[0] > 0
    assert analyst.execute("select count(*) from analytics.v_platform_extension_mm").fetchone()[0] > 0


@pytest.mark.parametrize(
    "statement",
    [
        "insert into analytics.metric_side_switches (device_id) values (999)",
        "update analytics.metric_side_switches set left_to_right = 0",
        "delete from analytics.metric_side_switches",
        "truncate analytics.metric_side_switches",
        "create table analytics.evil (id int)",
        "create table public.evil (id int)",
        "drop table analytics.metric_side_switches",
        "insert into ingest.raw_record (request_id, batch_index, body_text) values ('x', 0, 'x')",
    ],
)
def test_analyst_cannot_write_even_in_a_read_write_transaction(analyst: psycopg.Connection, statement: str) -> None:
    # The session default is read only (a relation the role may not even see fails on privileges first).
    with pytest.raises((psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
        analyst.execute(statement)
    analyst.rollback()
    analyst.execute("set transaction read write")  # and the role itself has no write privilege
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        analyst.execute(statement)
    analyst.rollback()


@pytest.mark.parametrize(
    "relation",
    ["ingest.raw_record", "ingest.processed_record", "ingest.device", "analytics_staging.stg_ingest__devices"],
)
def test_analyst_cannot_read_outside_analytics(analyst: psycopg.Connection, relation: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        analyst.execute(f"select 1 from {relation} limit 1")
    analyst.rollback()


# --- empty states: never a 500 ---------------------------------------------------------------------


def test_before_dbt_has_run_every_route_answers_not_built(fresh_db: DatabaseTarget, analytics_db: AnalyticsDb) -> None:
    ensure_analyst_role(fresh_db)  # (a no-op once migration 0002 brings the role)
    with _client(fresh_db) as client:
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        index = client.get("/analytics/").json()
        for metric in index["metrics"]:
            response = client.get(metric["path"])
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["reason"] in {"not_built", "not_permitted"} and metric["name"] in body["detail"]
        for name in ("side_switches", "counts_by_type"):
            response = client.get(f"/analytics/examples/{name}")
            assert response.status_code == 503 and "dbt" in response.json()["detail"]
        assert client.get("/analytics/rollout/format_share").status_code == 503
        assert client.get("/analytics/examples").status_code == 200  # the list needs no database


def test_a_missing_role_is_explained(analytics_db: AnalyticsDb) -> None:
    with _client(analytics_db.target, analytics_role="iot_no_such_role", request_timeout_seconds=1.0) as client:
        response = client.get("/analytics/metric_side_switches", headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 503
        body = response.json()
        assert body["reason"] == "database_unavailable" and "iot_no_such_role" in body["detail"]
        assert "migrat" in body["detail"]
