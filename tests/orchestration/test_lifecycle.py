"""The lifecycle job's assets and checks on a real database: partitions kept ahead, the default
partitions checked empty, old days archived with their manifests checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from ingest_service.lifecycle import partitions
from orchestration.defs.lifecycle.assets import (
    ARCHIVE_MANIFESTS_MATCH,
    DEFAULT_PARTITIONS_EMPTY,
    day_partitions,
    default_partitions_empty,
    ingest_archive,
)
from orchestration.lib.postgres import PostgresResource


def _postgres() -> PostgresResource:
    return PostgresResource(
        host=dg.EnvVar("POSTGRES_HOST"),
        port=dg.EnvVar.int("POSTGRES_PORT"),
        user=dg.EnvVar("POSTGRES_USER"),
        password=dg.EnvVar("POSTGRES_PASSWORD"),
        dbname=dg.EnvVar("POSTGRES_DB"),
    )


def _run(instance: dg.DagsterInstance) -> dict[str, bool]:
    result = dg.materialize(
        [day_partitions, default_partitions_empty, ingest_archive],
        resources={"postgres": _postgres()},
        instance=instance,
    )
    assert result.success
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_lifecycle_job_is_scheduled_daily_apart_from_the_hourly_job() -> None:
    from orchestration.definitions import defs as load

    defs = load()
    job = defs.resolve_job_def("lifecycle_daily_job")
    keys = {k.to_user_string() for k in job.asset_layer.executable_asset_keys}
    assert keys == {"ingest/day_partitions", "ingest/archive"}
    hourly = defs.resolve_job_def("analytics_hourly_job").asset_layer.executable_asset_keys
    assert not {k.to_user_string() for k in hourly} & keys
    assert defs.resolve_schedule_def("lifecycle_daily_schedule").cron_schedule == "15 0 * * *"


def test_a_row_in_a_default_partition_fails_the_check(
    dagster_env: DatabaseTarget, db: psycopg.Connection, instance: dg.DagsterInstance
) -> None:
    checks = _run(instance)
    assert checks == {DEFAULT_PARTITIONS_EMPTY: True, ARCHIVE_MANIFESTS_MATCH: True}
    first, last = partitions.window(None)
    names = {p.name for p in partitions.list_partitions(db)}
    assert {f"raw_record_p{first:%Y%m%d}", f"processed_record_p{last:%Y%m%d}"} <= names

    # An event time beyond every day partition: kept, in the default partition, and reported.
    db.execute(
        "with d as (insert into ingest.device (id, origin) values (1, 'legacy') returning id) "
        "insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value) "
        "select 1, d.id, 3, '2003-05-01', 50 from d"
    )
    result = default_partitions_empty(postgres=_postgres())
    assert not result.passed
    assert result.metadata["processed_record_default"].value == 1
    assert "processed_record_default: 1 rows" in (result.description or "")


def test_archive_asset_archives_old_days_and_checks_their_manifests(
    dagster_env: DatabaseTarget,
    db: psycopg.Connection,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = partitions.today() - timedelta(days=10)
    partitions.ensure(db, old, old)
    db.execute(
        "insert into ingest.raw_record (received_at, request_id, batch_index, body_text) values (%s, 'r', 0, 'x')",
        (datetime(old.year, old.month, old.day, 12, tzinfo=UTC),),
    )
    monkeypatch.setenv("RETENTION_DAYS", "5")
    monkeypatch.setenv("ARCHIVE_URL", str(tmp_path / "archive"))
    checks = _run(instance)
    assert checks[ARCHIVE_MANIFESTS_MATCH]
    event = instance.get_latest_materialization_event(dg.AssetKey(["ingest", "archive"]))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    assert metadata["rows_archived"].value == 1
    assert old.isoformat() in str(metadata["days"].value)
    assert (tmp_path / "archive" / old.isoformat() / "manifest.json").exists()
    assert not [p for p in partitions.list_partitions(db) if p.day is not None and p.day < old + timedelta(days=5)]
