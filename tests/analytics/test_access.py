"""Who may read analytics: the bearer key, and the analyst role the routes read through."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from pydantic import ValidationError

from ingest_service.analytics.reader import connection_kwargs
from ingest_service.core.database import DatabaseTarget
from ingest_service.main import create_app
from tests.analytics.conftest import API_KEY, AnalyticsDb, analytics_settings
from tests.utils.events import telemetry

PATHS = [
    "/analytics/",
    "/analytics/status",
    "/analytics/examples",
    "/analytics/examples/side_switches",
    "/analytics/metric_side_switches",
]
EXAMPLE_PATHS = ["/analytics/examples/side_switches", "/analytics/examples/counts_by_type"]
ROLLOUT = "/analytics/rollout/format_share"


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


def _client(db: AnalyticsDb, **overrides: object) -> TestClient:
    return TestClient(create_app(analytics_settings(db.target, db.manifest, **overrides)))


def test_dev_mode_without_a_key_is_open(analytics_db: AnalyticsDb) -> None:
    with _client(analytics_db, analytics_api_key=None) as client:
        assert client.get("/analytics/metric_side_switches").status_code == 200


def test_production_without_a_key_refuses_analytics_only(analytics_db: AnalyticsDb) -> None:
    overrides = {
        "analytics_api_key": None,
        "dev_mode": False,
        "provision_secret": "a-real-provision-secret-of-32-bytes-or-more",
    }
    with _client(analytics_db, **overrides) as client:
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
    """A connection exactly as the analytics pool opens them (role, read-only)."""
    kwargs = {**connection_kwargs(analytics_settings(analytics_db.target)), "autocommit": False}
    with psycopg.connect(analytics_db.target.url, **kwargs) as conn:
        assert conn.execute("select current_user").fetchone() == ("iot_analyst",)
        conn.rollback()
        yield conn


def test_analyst_reads_analytics(analyst: psycopg.Connection, analytics_db: AnalyticsDb) -> None:
    assert analyst.execute("show transaction_read_only").fetchone() == ("on",)
    assert analyst.execute("show jit").fetchone() == ("off",)  # compiling costs more than it saves here
    catalog = analytics_db.catalog
    for name in ("metric_side_switches", "v_platform_extension_mm"):
        query = sql.SQL("select count(*) from {}").format(catalog.relation(name))
        assert analyst.execute(query).fetchone()[0] > 0


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


def test_before_any_manifest_every_route_says_not_built_yet(fresh_db: DatabaseTarget) -> None:
    """A host where dbt has never run: the API starts, and every analytics route answers 503
    analytics_not_built with when the first build is due."""
    due = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    settings = analytics_settings(fresh_db, analytics_first_build_at=due)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        for path in ["/analytics/", "/analytics/metric_side_switches", "/analytics/anything", *EXAMPLE_PATHS, ROLLOUT]:
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["retry-after"]
            body = response.json()
            assert body["reason"] == "analytics_not_built" and body["first_build_at"] == due.isoformat()
            assert "not built yet, first build at 2031-05-06 07:08:09 UTC" in body["detail"], body
        status = client.get("/analytics/status").json()
        assert status["built"] is False and status["built_at"] is None and status["models"] == []
        assert status["first_build_at"] == "2031-05-06T07:08:09Z" and "first build at" in status["detail"]
        assert client.get("/analytics/examples").status_code == 200  # the list needs no database


def test_before_dbt_has_built_every_route_answers_not_built(
    fresh_db: DatabaseTarget, analytics_db: AnalyticsDb
) -> None:
    """A manifest (dbt parsed the project) but a database dbt has not built: 503 per relation."""
    with TestClient(
        create_app(analytics_settings(fresh_db, analytics_db.manifest)), headers={"Authorization": f"Bearer {API_KEY}"}
    ) as client:
        index = client.get("/analytics/").json()
        assert index["metrics"]
        for metric in index["metrics"]:
            response = client.get(metric["path"])
            assert response.status_code == 503, response.text
            body = response.json()
            assert body["reason"] == "analytics_not_built" and f"{metric['name']} is not built yet" in body["detail"]
            assert body["first_build_at"] is None and "iot-platform dbt build" in body["detail"]
        for path in [*EXAMPLE_PATHS, ROLLOUT]:
            response = client.get(path)
            assert response.status_code == 503 and response.json()["reason"] == "analytics_not_built", path
        status = client.get("/analytics/status").json()
        assert status["built"] is False and status["models"] == [m["name"] for m in index["metrics"]]


def test_status_says_when_the_data_is_from(api: TestClient, db: psycopg.Connection, analytics_db: AnalyticsDb) -> None:
    query = sql.SQL("select built_at from {}").format(analytics_db.catalog.relation("analytics_build"))
    (built_at,) = db.execute(query).fetchone()
    status = api.get("/analytics/status").json()
    assert status["built"] is True and status["not_served"] == {}
    assert datetime.fromisoformat(status["built_at"]) == built_at
    assert status["detail"] == f"data as of {built_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC (the last dbt build)"


def test_a_missing_role_is_explained(analytics_db: AnalyticsDb) -> None:
    with _client(analytics_db, analytics_role="iot_no_such_role", request_timeout_seconds=1.0) as client:
        response = client.get("/analytics/metric_side_switches", headers={"Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 503
        body = response.json()
        assert body["reason"] == "database_unavailable" and "iot_no_such_role" in body["detail"]
        assert "migrat" in body["detail"]
        assert 'role "iot_no_such_role" does not exist' not in body["detail"]  # the database's text stays in the log
