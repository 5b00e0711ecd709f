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

from orchestration.lib.dbt.args import dbt_build_args, dbt_timings, hourly_dbt_vars, hourly_test_window
from orchestration.lib.dbt.manifest import freshness_status
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
    assert {"analytics_hourly_job", "analytics_daily_job"} <= job_names
    for name in job_names:
        assert defs.resolve_job_def(name).name == name
    schedules = list(repo.schedule_defs)
    assert {s.name for s in schedules} == {
        "analytics_hourly_schedule",
        "analytics_daily_schedule",
        "lifecycle_daily_schedule",
    }
    for schedule in schedules:
        assert schedule.job_name in job_names
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_hourly_job_runs_in_one_process_and_the_daily_job_refreshes_everything(defs: dg.Definitions) -> None:
    hourly = defs.resolve_job_def("analytics_hourly_job")
    daily = defs.resolve_job_def("analytics_daily_job")
    assert hourly.executor_def.name == "in_process" and daily.executor_def.name == "in_process"
    assert daily.run_config and daily.run_config["ops"]["dbt_models"]["config"]["full_refresh"] is True
    # The same assets and checks (every dbt test, as test_assets.py asserts of the hourly run's evaluations).
    assert hourly.asset_layer.selected_asset_keys == daily.asset_layer.selected_asset_keys
    assert hourly.asset_layer.asset_graph.asset_check_keys == daily.asset_layer.asset_graph.asset_check_keys
    # One dbt step: every dbt asset is in the one multi-asset.
    dbt_steps = [node for node in hourly.graph.node_defs if node.name == "dbt_models"]
    assert len(dbt_steps) == 1
    schedule = defs.resolve_schedule_def("analytics_hourly_schedule")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 3, 4, 17, 5, tzinfo=UTC),
            repository_def=defs.get_repository_def(),
        )
        [request] = schedule.evaluate_tick(context).run_requests or []
    assert request.run_key == "2026-03-04T17:05:00+00:00" and request.partition_key is None


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
    assert "incremental" in specs[dg.AssetKey("fct_readings_hourly")].kinds


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


def test_the_hourly_test_window_opens_at_the_watermark_or_the_oldest_reprocessed_day() -> None:
    watermark = datetime(2026, 3, 4, 17, 2, tzinfo=UTC)
    assert hourly_test_window(None, []) == ""  # no rollup yet: a first build tests everything
    assert hourly_test_window(watermark, []) == "2026-03-04T17:02:00+00:00"
    # Reprocessed days are rebuilt whole (a var, sorted and once each), and tested from the oldest.
    days = ["2026-03-01", "2026-02-27", "2026-03-01"]
    assert hourly_test_window(watermark, days) == "2026-02-27T00:00:00+00:00"
    assert hourly_dbt_vars(days) == {"reprocess_days": ["2026-02-27", "2026-03-01"]}
    assert hourly_dbt_vars([]) == {}
    with pytest.raises(ValueError):
        hourly_dbt_vars(["yesterday"])


def test_freshness_status_follows_dbt_thresholds() -> None:
    criteria = {"warn_after": {"count": 1, "period": "hour"}, "error_after": {"count": 24, "period": "hour"}}
    now = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
    assert freshness_status(criteria, datetime(2026, 3, 4, 16, 30, tzinfo=UTC), now) == ("pass", 1800.0)
    assert freshness_status(criteria, datetime(2026, 3, 4, 15, 0, tzinfo=UTC), now)[0] == "warn"
    assert freshness_status(criteria, datetime(2026, 3, 3, 16, 0, tzinfo=UTC), now)[0] == "error"
    assert freshness_status(criteria, None, now)[0] == "error"  # an empty table is not fresh


def test_dbt_timings_split_dbt_from_the_rest() -> None:
    results = {
        "elapsed_time": 10.0,
        "results": [
            {"unique_id": "model.iot_platform.ingest_parse", "execution_time": 4.0},
            {"unique_id": "test.iot_platform.unique_ingest_parse_raw_record_id.abc123", "execution_time": 1.5},
        ],
    }
    timings = dbt_timings(results, 14.0)
    assert timings["outside_dbt_s"] == 4.0 and timings["models_s"] == 4.0 and timings["tests_s"] == 1.5
    assert timings["slowest"] == {"ingest_parse": 4.0, "unique_ingest_parse_raw_record_id": 1.5}


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
