"""Tier 3 (definitions load, jobs and schedules resolve) and tier 1 (pure helpers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from orchestration.lib.dbt.args import dbt_build_args, rollup_vars
from orchestration.lib.instance import dagster_postgres_url, ensure_schema, prepare_dagster_home
from tests.utils.processes import PROJECT_ROOT

LEDGER_TEST = "assert_each_raw_record_has_exactly_one_outcome"


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from orchestration.definitions import defs as load

    return load()


def _specs(defs: dg.Definitions) -> dict[dg.AssetKey, dg.AssetSpec]:
    return {spec.key: spec for spec in defs.resolve_all_asset_specs()}


def test_definitions_load_every_job_and_schedule(defs: dg.Definitions) -> None:
    repo = defs.get_repository_def()
    job_names = {job.name for job in repo.get_all_jobs() if not job.name.startswith("__")}
    assert "analytics_hourly_job" in job_names
    for name in job_names:
        assert defs.resolve_job_def(name).name == name
    schedules = list(repo.schedule_defs)
    assert {s.name for s in schedules} == {"analytics_hourly_schedule", "lifecycle_daily_schedule"}
    for schedule in schedules:
        assert schedule.job_name in job_names
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_hourly_schedule_targets_the_current_ingest_day(defs: dg.Definitions) -> None:
    schedule = defs.resolve_schedule_def("analytics_hourly_schedule")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 3, 4, 17, 5, tzinfo=UTC),
            repository_def=defs.get_repository_def(),
        )
        data = schedule.evaluate_tick(context)
    [request] = data.run_requests or []
    assert request.partition_key == "2026-03-04"


def test_asset_graph_starts_at_ingest_and_is_grouped_by_dbt_folder(defs: dg.Definitions) -> None:
    specs = _specs(defs)
    groups: dict[str, set[str]] = {}
    for key, spec in specs.items():
        groups.setdefault(spec.group_name or "", set()).add(key.to_user_string())
    assert {f"ingest/{t}" for t in ("raw_record", "processed_record", "raw_duplicate", "device_startup")} <= groups[
        "ingest"
    ]
    assert "staging/stg_ingest__raw_records" in groups["staging"]
    assert "staging/int_readings_unified_mm" in groups["intermediate"]
    assert {"fct_readings_hourly", "ingest_parse", "v_platform_extension_mm", "rollout_key_figures"} <= groups["marts"]
    raw = specs[dg.AssetKey(["staging", "stg_ingest__raw_records"])]
    assert dg.AssetKey(["ingest", "raw_record"]) in {dep.asset_key for dep in raw.deps}
    assert raw.owners == ["team:data"] and "dbt" in raw.kinds and raw.description
    assert specs[dg.AssetKey(["ingest", "raw_record"])].owners == ["team:ingest"]
    assert specs[dg.AssetKey("fct_readings_hourly")].partitions_def is not None


def test_every_dbt_test_is_an_asset_check_and_the_python_checks_too(defs: dg.Definitions) -> None:
    from orchestration.defs.dbt.project import dbt_project

    specs = {spec.key: spec for ad in defs.resolve_asset_graph().assets_defs for spec in ad.check_specs}
    names_by_asset: dict[str, set[str]] = {}
    for key in specs:
        names_by_asset.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    manifest = json.loads(dbt_project.manifest_path.read_text())
    dbt_tests = {node["name"] for node in manifest["nodes"].values() if node["resource_type"] == "test"}
    dbt_checks = [key for key, spec in specs.items() if "dagster_dbt/unique_id" in (spec.metadata or {})]
    assert sorted(key.name for key in dbt_checks) == sorted(dbt_tests)  # every test, singular ones too, once
    assert "source_unique_ingest_raw_record_id" in names_by_asset["ingest/raw_record"]
    # The ledger accounting is dbt's singular test, a blocking check on the ledger's staging model.
    ledger = dg.AssetCheckKey(dg.AssetKey(["staging", "stg_ingest__raw_records"]), LEDGER_TEST)
    assert specs[ledger].blocking
    assert {"source_is_fresh"} <= names_by_asset["ingest/raw_record"] & names_by_asset["ingest/processed_record"]
    assert "ingest_error_rate_within_threshold" in names_by_asset["ingest_parse"]
    python_checks = {key.name for key in specs} - dbt_tests
    assert python_checks == {
        "source_is_fresh",
        "ingest_error_rate_within_threshold",
        "ingest_default_partitions_empty",
        "archive_manifests_match",
    }


@pytest.mark.slow
def test_dg_check_defs_passes_without_the_venv_on_path(dbt_manifest) -> None:
    """`.venv/bin/dg check defs` as a data engineer runs it, nothing activated: dbt is found next to
    the running Python, not on PATH."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "check", "defs"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_dbt_build_args_name_the_tests_exclude_unit_tests_and_pass_vars() -> None:
    assert dbt_build_args() == ["build", "--exclude-resource-type", "unit_test", "--indirect-selection", "empty"]
    args = dbt_build_args(
        tests=["p.a", "p.b"], full_refresh=True, dbt_vars={"rollup_since": "2026-01-01T00:00:00+00:00"}
    )
    assert args[5:] == [
        "--select",
        "p.a p.b",
        "--full-refresh",
        "--vars",
        '{"rollup_since": "2026-01-01T00:00:00+00:00"}',
    ]


def test_rollup_vars_rebuild_closed_days_and_use_the_watermark_today() -> None:
    now = datetime(2026, 3, 4, 17, 5, tzinfo=UTC)
    past = dg.TimeWindow(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 3, tzinfo=UTC))
    today = dg.TimeWindow(datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC))
    assert rollup_vars(past, now) == {
        "rollup_since": "2026-03-01T00:00:00+00:00",
        "rollup_until": "2026-03-03T00:00:00+00:00",
    }
    assert rollup_vars(today, now) == {}


def test_dagster_postgres_url_keeps_the_socket_and_sets_the_schema() -> None:
    url = dagster_postgres_url("postgresql://postgres@/iot?host=%2Fwork%2F.data%2Fpg")
    assert url == "postgresql+psycopg2://postgres@/iot?host=%2Fwork%2F.data%2Fpg&options=-csearch_path%3Ddagster"


def test_dagster_instance_on_postgres_stores_events(fresh_db, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance `make up` runs (orchestration/instance/dagster.yaml) on the platform's PostgreSQL:
    an asset event goes through the event log storage (its NOTIFY included) and reads back. No
    telemetry, and no newsletter modal over the first page (nux)."""
    home = prepare_dagster_home(tmp_path)
    ensure_schema(fresh_db.url)
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", dagster_postgres_url(fresh_db.url))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert not instance.nux_enabled and not instance.telemetry_enabled
        instance.report_runless_asset_event(dg.AssetMaterialization("storage_smoke"))
        event = instance.get_latest_materialization_event(dg.AssetKey("storage_smoke"))
        assert event is not None and event.asset_materialization is not None
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from dagster.event_logs").fetchone()[0] >= 1
