"""Tier 2: the dbt assets, the rollup and the checks run in process against a database the API filled.

The tests share one database (`built_db`) and run in file order: good data first, then each kind of
bad data, then the backfill.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from tests.orchestration.conftest import post
from tests.utils.events import telemetry

PYTHON_CHECKS = {"ingest_error_rate_within_threshold", "source_is_fresh"}
LEDGER_TEST = "assert_each_raw_record_has_exactly_one_outcome"
ROLLUP = dg.AssetSelection.assets("fct_readings_hourly")


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from orchestration.definitions import defs as load

    return load()


@pytest.fixture(scope="module")
def everything(defs: dg.Definitions) -> list:
    """Every asset and check definition of the code location, with its resources already bound."""
    return [ad for ad in defs.resolve_asset_graph().assets_defs if ad.is_executable]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def _postgres():
    from orchestration.lib.postgres import PostgresResource

    return PostgresResource(
        host=dg.EnvVar("POSTGRES_HOST"),
        port=dg.EnvVar.int("POSTGRES_PORT"),
        user=dg.EnvVar("POSTGRES_USER"),
        password=dg.EnvVar("POSTGRES_PASSWORD"),
        dbname=dg.EnvVar("POSTGRES_DB"),
    )


def _dbt(*args: str) -> None:
    from orchestration.defs.dbt.project import dbt_project
    from orchestration.lib.dbt.cli import dbt_cli

    dbt_cli(dbt_project).cli([*args, "--exclude-resource-type", "unit_test"]).wait()


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _materialized(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetMaterialization]:
    return {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}


def _rollup_rows(target: DatabaseTarget) -> list[tuple]:
    with psycopg.connect(target.url) as conn:
        return conn.execute(
            """
            select hour_start, device_id, record_type_id, reading_count, min_value, max_value,
                   round(sum_value::numeric, 6), round(coalesce(sum_mm, 0)::numeric, 6), last_ingested_at
            from analytics.fct_readings_hourly
            order by hour_start, device_id, record_type_id
            """
        ).fetchall()


def _manifest_tests() -> set[str]:
    from orchestration.defs.dbt.project import dbt_project

    manifest = json.loads(dbt_project.manifest_path.read_text())
    return {node["name"] for node in manifest["nodes"].values() if node["resource_type"] == "test"}


def _job(defs: dg.Definitions, instance: dg.DagsterInstance, name: str = "analytics_hourly_job"):
    """A scheduled job as its schedule runs it: every asset and check, the job's own config."""
    return defs.resolve_job_def(name).execute_in_process(instance=instance, raise_on_error=False)


@pytest.mark.timeout(1500)  # a whole scheduled job: minutes on a busy 2-core machine
def test_hourly_job_on_good_data_runs_every_dbt_test_as_a_check(
    defs: dg.Definitions, built_db: DatabaseTarget, instance: dg.DagsterInstance
) -> None:
    result = _job(defs, instance)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert sorted(e.check_name for e in evaluations if not e.passed) == []
    dbt_tests = _manifest_tests()
    dbt_evaluations = [e.check_name for e in evaluations if e.check_name not in PYTHON_CHECKS]
    assert sorted(dbt_evaluations) == sorted(dbt_tests)  # each test once: none skipped, none twice
    fresh = {e.asset_key.to_user_string() for e in evaluations if e.check_name == "source_is_fresh"}
    assert fresh == {"ingest/raw_record", "ingest/processed_record"}
    assert "ingest_error_rate_within_threshold" in {e.check_name for e in evaluations}

    materialized = _materialized(result)
    assert {"fct_readings_hourly", "ingest_parse", "fct_rollout_key_figures", "rollout_key_figures"} <= set(
        materialized
    )
    # Row counts (`fetch_row_counts`) come from the manifest's relation names, which carry the database
    # the manifest was prepared against; the session prepares it once, not per test database, so they
    # are not asserted here (`make up` prepares it against the database it runs on).
    figures = materialized["rollout_key_figures"].metadata
    assert 0 < figures["new_format_device_share"].value < 1
    assert 0 < figures["new_format_reading_share"].value < 1
    assert (figures["legacy_only_devices"].value, figures["new_only_devices"].value) == (3, 3)
    assert figures["migrated_devices"].value == 2
    assert 0 <= figures["side_switches_last_hour"].value <= figures["side_switches_total"].value
    assert figures["side_switches_total"].value > 0
    assert isinstance(figures["ingest_error_rate"], dg.FloatMetadataValue)
    assert 0 < figures["ingest_error_rate"].value < 0.35
    with psycopg.connect(built_db.url) as conn:
        (watermark,) = conn.execute("select max(last_ingested_at) from analytics.fct_readings_hourly").fetchone()
    assert figures["data_as_of"].value == watermark.isoformat()


def test_reprocessed_days_equal_a_full_build(
    everything: list, built_db: DatabaseTarget, instance: dg.DagsterInstance
) -> None:
    """Runs right after the full build above: its rollup is the reference."""
    full_rows = _rollup_rows(built_db)
    with psycopg.connect(built_db.url, autocommit=True) as conn:
        days = [
            str(day)
            for (day,) in conn.execute(
                "select distinct (record_time at time zone 'UTC')::date from ingest.processed_record order by 1"
            )
        ]
        # Lose the rollup's rows of the two past days (the table stays, so the run below is
        # incremental, and its watermark is today's); today's rows stay and must come out untouched.
        lost = conn.execute(
            "delete from analytics.fct_readings_hourly where last_ingested_at < %s::date", (_today(),)
        ).rowcount
    assert len(days) == 3 and days[-1] == _today()
    assert 0 < lost < len(full_rows)
    # What a ledger replay asks of the marts: the days it touched, rebuilt whole (the dbt var
    # reprocess_days, from the job's config).
    result = dg.materialize(
        everything,
        selection=ROLLUP,
        instance=instance,
        run_config={"ops": {"dbt_models": {"config": {"reprocess_days": days[:2]}}}},
    )
    assert result.success
    assert _rollup_rows(built_db) == full_rows
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations)


def test_error_burst_fails_the_error_rate_check(built_db: DatabaseTarget) -> None:
    from orchestration.defs.quality.checks import ErrorRateConfig, ingest_error_rate_within_threshold

    config = ErrorRateConfig(threshold=0.35, window_minutes=60, min_records=50)
    assert ingest_error_rate_within_threshold(postgres=_postgres(), config=config).passed

    burst = [telemetry(4, "platform_extension_mm", "high", time.time() - i) for i in range(200)]
    assert post(built_db, [burst]) == {"invalid": 200}
    _dbt("build", "--select", "ingest_parse")
    result = ingest_error_rate_within_threshold(postgres=_postgres(), config=config)
    assert not result.passed
    assert result.metadata["formats_over_threshold"].value == "new"
    assert result.metadata["error_rate_new"].value > 0.6
    assert result.metadata["error_rate_legacy"].value < 0.35


def test_stale_facts_fail_the_freshness_check(built_db: DatabaseTarget) -> None:
    """dbt's source freshness thresholds, surfaced as checks: warn after an hour without facts, error after a day."""
    from orchestration.defs.quality.checks import ingest_sources_are_fresh

    def freshness() -> dict[str, dg.AssetCheckResult]:
        results = ingest_sources_are_fresh(postgres=_postgres())
        return {r.asset_key.to_user_string(): r for r in results}

    assert all(r.passed for r in freshness().values())
    with psycopg.connect(built_db.url, autocommit=True) as conn:
        conn.execute("update ingest.processed_record set ingested_at = ingested_at - interval '2 hours'")
        stale = freshness()
        conn.execute("update ingest.processed_record set ingested_at = ingested_at - interval '1 day'")
        dead = freshness()
        conn.execute("update ingest.processed_record set ingested_at = ingested_at + interval '1 day 2 hours'")
    facts = "ingest/processed_record"
    assert not stale[facts].passed and stale[facts].severity == dg.AssetCheckSeverity.WARN
    assert stale[facts].metadata["age_minutes"].value >= 119
    assert not dead[facts].passed and dead[facts].severity == dg.AssetCheckSeverity.ERROR
    assert stale["ingest/raw_record"].passed and dead["ingest/raw_record"].passed  # the ledger is still fresh


@pytest.mark.timeout(1500)  # a whole scheduled job: minutes on a busy 2-core machine
def test_orphan_raw_row_fails_the_ledger_check_and_blocks_the_marts(
    defs: dg.Definitions, built_db: DatabaseTarget, instance: dg.DagsterInstance
) -> None:
    """Last: the ledger is append-only, so the orphan stays."""
    with psycopg.connect(built_db.url, autocommit=True) as conn:
        conn.execute("insert into ingest.raw_record (request_id, batch_index, payload) values ('orphan', 0, '{}')")
    # The hourly job: only the staging step may run.
    result = _job(defs, instance)
    ledger = _evaluations(result)[LEDGER_TEST]
    assert not ledger.passed and ledger.severity == dg.AssetCheckSeverity.ERROR
    assert ledger.asset_key == dg.AssetKey(["staging", "stg_ingest__raw_records"])
    assert ledger.metadata["dagster_dbt/failed_row_count"].value == 1
    materialized = set(_materialized(result))
    assert "staging/stg_ingest__raw_records" in materialized
    assert not materialized & {"staging/int_raw_record_outcomes", "ingest_parse", "fct_readings_hourly"}
    assert not materialized & {"fct_rollout_format_share_daily", "rollout_key_figures"}
