"""Least-privilege roles from migration 0002, proven by logging in as a member of each group."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable

import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest import writer
from ingest_service.main import create_app
from tests.ingest_service.conftest import SECRET, make_settings
from tests.utils.events import startup, telemetry

Login = Callable[[str], DatabaseTarget]
roles_migration = importlib.import_module("ingest_service.migrations.versions.0002_roles")


def _denied(conn: psycopg.Connection, statement: str, what: str) -> None:
    """The statement fails for lack of a privilege (not because of a trigger or a constraint)."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(statement)
    assert f"permission denied for {what}" in str(caught.value) or f"must be owner of {what}" in str(caught.value)
    conn.rollback()


def _insert_event(conn: psycopg.Connection, device_id: int) -> tuple[int, int]:
    raw = conn.execute(
        """insert into ingest.raw_record (request_id, batch_index, payload)
           values ('role-test', 0, '{"x": 1}') returning id"""
    ).fetchone()
    assert raw is not None
    conn.execute("insert into ingest.device (id, origin) values (%s, 'legacy') on conflict do nothing", (device_id,))
    fact = conn.execute(
        """insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value)
           values (%s, %s, 1, now(), 10) returning id""",
        (raw[0], device_id),
    ).fetchone()
    assert fact is not None
    return raw[0], fact[0]


def test_ingest_role_appends_to_the_ledger_but_cannot_rewrite_it(login_factory: Login, db: psycopg.Connection) -> None:
    db.execute("create table analytics.metric (n int)")
    with psycopg.connect(login_factory("iot_ingest").url) as conn:
        raw_id, fact_id = _insert_event(conn, 7)
        conn.execute(
            "insert into ingest.ingest_error (raw_record_id, reason, detail) values (%s, 'x', 'y')",
            (
                conn.execute(
                    "insert into ingest.raw_record (request_id, batch_index, body_text) "
                    "values ('r', 0, 'junk') returning id"
                ).fetchone()[0],
            ),  # type: ignore[index]
        )
        conn.execute("update ingest.device set last_seen_at = now() where id = 7")
        conn.commit()
        assert conn.execute("select count(*) from ingest.raw_record").fetchone() == (2,)

        _denied(conn, f"update ingest.raw_record set request_id = 'forged' where id = {raw_id}", "table raw_record")
        _denied(conn, f"delete from ingest.raw_record where id = {raw_id}", "table raw_record")
        _denied(conn, "truncate ingest.raw_record", "table raw_record")
        _denied(conn, f"update ingest.processed_record set value = 0 where id = {fact_id}", "table processed_record")
        _denied(conn, f"delete from ingest.processed_record where id = {fact_id}", "table processed_record")
        _denied(conn, "delete from ingest.device", "table device")
        _denied(conn, "update ingest.record_type set max_value = 1e9", "table record_type")
        _denied(conn, "create table ingest.backdoor (x int)", "schema ingest")
        _denied(conn, "select * from analytics.metric", "schema analytics")
        assert conn.execute("select current_user").fetchone() == ("iot_ingest",)


def test_analyst_reads_only_the_dbt_output(login_factory: Login, db: psycopg.Connection) -> None:
    # one table built by Dagster's role, one by the migrating (owner) role: both readable by analysts
    db.execute("set role iot_dagster")
    db.execute("create table analytics.by_dagster as select 1 as n")
    db.execute("reset role")
    db.execute("create table analytics.by_owner as select 2 as n")
    with psycopg.connect(login_factory("iot_analyst").url) as conn:
        assert conn.execute("select n from analytics.by_dagster").fetchone() == (1,)
        assert conn.execute("select n from analytics.by_owner").fetchone() == (2,)
        conn.commit()
        _denied(conn, "select count(*) from ingest.raw_record", "schema ingest")
        _denied(conn, "insert into analytics.by_dagster values (3)", "table by_dagster")
        _denied(conn, "delete from analytics.by_owner", "table by_owner")
        _denied(conn, "create table analytics.mine (x int)", "schema analytics")
        _denied(conn, "drop table analytics.by_dagster", "table by_dagster")


def test_dagster_owns_analytics_and_reads_ingest(login_factory: Login, db: psycopg.Connection) -> None:
    _insert_event(db, 3)
    with psycopg.connect(login_factory("iot_dagster").url) as conn:
        conn.execute(
            "create table analytics.facts_per_device as select device_id, count(*) as n "
            "from ingest.processed_record group by device_id"
        )
        conn.execute("alter table analytics.facts_per_device rename to facts_by_device")  # dbt's swap
        conn.commit()
        assert conn.execute("select device_id, n from analytics.facts_by_device").fetchone() == (3, 1)
        _denied(
            conn,
            "insert into ingest.raw_record (request_id, batch_index, body_text) values ('x', 0, 'y')",
            "table raw_record",
        )
        _denied(conn, "delete from ingest.processed_record", "table processed_record")
    with psycopg.connect(login_factory("iot_analyst").url) as conn:
        assert conn.execute("select n from analytics.facts_by_device").fetchone() == (1,)


def test_api_works_logged_in_as_an_ingest_member(login_factory: Login, db: psycopg.Connection) -> None:
    target = login_factory("iot_ingest")
    now = time.time()
    batch = [
        telemetry(device_id=5, event_type="platform_extension_ticks", value=300, timestamp=now - 5),
        telemetry(device_id=5, event_type="platform_extension_ticks", value=300, timestamp=now - 5),
        {"device_id": 5},
        startup(SECRET, "SN-ROLE-1"),
        startup(SECRET, "SN-000005", device_id=5),
        startup("wrong", "SN-ROLE-2"),
    ]
    keyed = {"Idempotency-Key": "role-test"}
    with TestClient(create_app(make_settings(target))) as client:
        assert client.get("/readyz").status_code == 200
        response = client.post("/ingest", json=batch, headers=keyed)
        assert response.status_code == 200
        statuses = [r["status"] for r in response.json()]
        assert statuses == ["ok", "duplicate", "invalid", "provisioned", "provisioned", "unauthorized"]
        replay = client.post("/ingest", json=batch, headers=keyed)  # a delivery key read back
        assert (replay.json(), replay.headers["idempotent-replayed"]) == (response.json(), "true")
        device_id = response.json()[3]["device_id"]
        assert client.post("/ingest", json=telemetry(device_id=device_id, value=-3)).json()["status"] == "ok"
        with psycopg.connect(target.url, autocommit=True) as conn:  # the API's sweep of keys and failures
            conn.execute(writer.SWEEP_DELIVERIES, (0.0,), prepare=False)
            conn.execute(writer.SWEEP_FAILURES, (0.0,), prepare=False)
    writers = db.execute("select count(*) from pg_roles where rolname = %s", (target.parts["user"],)).fetchone()
    assert writers == (1,)
    assert db.execute("select count(*) from ingest.raw_record").fetchone() == (7,)
    assert db.execute("select count(*) from ingest.delivery").fetchone() == (0,)


def test_roles_migration_is_idempotent(db: psycopg.Connection) -> None:
    for _ in range(2):
        db.execute(roles_migration.CREATE_ROLES)
        db.execute(roles_migration.GRANTS)
        db.execute(roles_migration.DATABASE_GRANTS)
    groups = db.execute(
        "select rolname, rolcanlogin from pg_roles where rolname = any(%s) order by 1", (list(roles_migration.ROLES),)
    ).fetchall()
    assert groups == [("iot_analyst", False), ("iot_dagster", False), ("iot_ingest", False)]
