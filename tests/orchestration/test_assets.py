"""Tier 2: the dbt assets, the rollup and the checks run in process against a database the API filled.

The tests share one database (`built_db`) and run in file order: good data first, then each kind of
bad data, then the backfill.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from tests.orchestration.conftest import post
from tests.utils.events import telemetry

PYTHON_CHECKS = {"ledger_accounts_for_every_raw_row", "ingest_error_rate_within_threshold", "facts_are_fresh"}
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


def test_materialize_everything_on_good_data(
    everything: list, built_db: DatabaseTarget, instance: dg.DagsterInstance
) -> None:
    result = dg.materialize(everything, instance=instance, partition_key=_today(), raise_on_error=False)
    assert result.success
    evaluations = _evaluations(result)
    assert sorted(name for name, e in evaluations.items() if not e.passed) == []
    assert PYTHON_CHECKS <= set(evaluations)
    assert any(name.startswith("source_") for name in evaluations)  # the ingest tables' dbt tests

    materialized = _materialized(result)
    assert {"fct_readings_hourly", "ingest_parse", "fct_rollout_format_share_daily", "rollout_key_figures"} <= set(
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
    assert figures["side_switches_total"].value > 0
    assert isinstance(figures["ingest_error_rate"], dg.FloatMetadataValue)


def test_partitioned_backfill_of_two_days_equals_a_full_build(
    everything: list, built_db: DatabaseTarget, instance: dg.DagsterInstance
) -> None:
    """Runs right after the full build above: its rollup is the reference."""
    full_rows = _rollup_rows(built_db)
    with psycopg.connect(built_db.url, autocommit=True) as conn:
        days = [
            str(day)
            for (day,) in conn.execute(
                "select distinct (ingested_at at time zone 'UTC')::date from ingest.processed_record order by 1"
            )
        ]
        # Lose the rollup's rows of the two past days (the table stays, so the runs below are
        # incremental); today's rows stay and must come out untouched.
        lost = conn.execute(
            "delete from analytics.fct_readings_hourly where last_ingested_at < %s::date",
            (_today(),),
        ).rowcount
    assert len(days) == 3 and days[-1] == _today()
    assert {str(row[8].astimezone(UTC).date()) for row in full_rows} == set(days)

    assert 0 < lost < len(full_rows)
    # Backfill the two past days as the daemon runs it (BackfillPolicy.single_run): one run over the
    # partition range. A closed range re-rolls the groups its days' facts touch, and no others.
    result = dg.materialize(
        everything,
        selection=ROLLUP,
        instance=instance,
        tags={"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[1]},
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


def test_orphan_raw_row_fails_the_ledger_check_and_blocks_the_marts(
    everything: list, built_db: DatabaseTarget, instance: dg.DagsterInstance
) -> None:
    with psycopg.connect(built_db.url, autocommit=True) as conn:
        conn.execute("insert into ingest.raw_record (request_id, batch_index, payload) values ('orphan', 0, '{}')")
    # The whole graph, as the hourly job runs it: only the staging step may run.
    result = dg.materialize(everything, instance=instance, partition_key=_today(), raise_on_error=False)
    ledger = _evaluations(result)["ledger_accounts_for_every_raw_row"]
    assert not ledger.passed
    assert ledger.metadata["without_outcome"].value == 1
    assert ledger.metadata["raw_rows"].value == ledger.metadata["accounted"].value + 1
    materialized = set(_materialized(result))
    assert "staging/stg_ingest__raw_records" in materialized
    assert not materialized & {"staging/int_raw_record_outcomes", "ingest_parse", "fct_readings_hourly"}
    assert not materialized & {"fct_rollout_format_share_daily", "rollout_key_figures"}


def test_stale_facts_fail_the_freshness_check(built_db: DatabaseTarget) -> None:
    from orchestration.defs.quality.checks import FactsFreshnessConfig, facts_are_fresh

    assert facts_are_fresh(postgres=_postgres(), config=FactsFreshnessConfig(max_age_minutes=30)).passed
    with psycopg.connect(built_db.url, autocommit=True) as conn:
        raw_id = conn.execute(
            "insert into ingest.raw_record (request_id, batch_index, payload) values ('old', 0, '{}') returning id"
        ).fetchone()[0]
        conn.execute(
            """insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value,
                                                   ingested_at)
               values (%s, 1, 1, now() - interval '3 days', 100, now() - interval '3 days')""",
            (raw_id,),
        )
        # Nothing ingested for two hours: every fact is old.
        conn.execute("update ingest.processed_record set ingested_at = now() - interval '2 hours'")
    stale = facts_are_fresh(postgres=_postgres(), config=FactsFreshnessConfig(max_age_minutes=30))
    assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
    assert stale.metadata["age_minutes"].value >= 119
    assert facts_are_fresh(postgres=_postgres(), config=FactsFreshnessConfig(max_age_minutes=180)).passed
    with psycopg.connect(built_db.url, autocommit=True) as conn:
        conn.execute("delete from ingest.processed_record where raw_record_id = %s", (raw_id,))
