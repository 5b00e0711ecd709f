"""dbt on a database written with plain SQL (tests/dbt/helpers.load_via_sql): every metric equals
its Python computation, the incremental rollup merges late data, and each singular test fails
when its invariant is broken.

Needs no API, so it guards the models while the ingest path changes; test_dbt_ingest_e2e.py runs
the same metric checks on data that went through POST /ingest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from tests.dbt.events import MM, TICKS, Scenario, expected, make_scenario
from tests.dbt.helpers import insert_fact, insert_raw, load_via_sql, query, run_dbt
from tests.dbt.metric_checks import CHECKS

pytestmark = [pytest.mark.db, pytest.mark.slow]


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return make_scenario(seed=11)


@pytest.fixture(scope="module")
def dbt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dbt_target")


@pytest.fixture(scope="module")
def as_of_vars(scenario: Scenario) -> dict[str, Any]:
    return {"metrics_as_of": datetime.fromtimestamp(scenario.as_of, UTC).isoformat()}


@pytest.fixture(scope="module")
def built_db(
    module_db: DatabaseTarget, scenario: Scenario, dbt_dir: Path, as_of_vars: dict[str, Any]
) -> Iterator[DatabaseTarget]:
    load_via_sql(module_db, scenario)
    result = run_dbt(module_db, ["build"], dbt_dir, vars=as_of_vars, check=False)
    assert result.returncode == 0, result.stdout[-8000:]
    (dbt_dir / "run_results.json").rename(dbt_dir / "build_results.json")
    yield module_db


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_metric_equals_python_computation(built_db: DatabaseTarget, scenario: Scenario, name: str) -> None:
    CHECKS[name](built_db, expected(scenario))


def test_build_ran_unit_tests(built_db: DatabaseTarget, dbt_dir: Path) -> None:
    results = _results(dbt_dir, "build_results.json")
    unit = [r for r in results if r["unique_id"].startswith("unit_test.")]
    assert len(unit) >= 7
    assert all(r["status"] == "pass" for r in unit)


def test_incremental_rollup_merges_a_late_hour(
    built_db: DatabaseTarget, scenario: Scenario, dbt_dir: Path, as_of_vars: dict[str, Any]
) -> None:
    device = scenario.upgraded_device
    old_hour = scenario.as_of - 20 * 3600
    new_hour = scenario.as_of + 2 * 3600  # after every scenario event: a new rollup row
    count_sql = (
        "select coalesce(sum(reading_count), 0)::int from analytics.fct_readings_hourly "
        "where device_id = %s and record_type_id = %s and hour_start = date_trunc('hour', to_timestamp(%s), 'UTC')"
    )
    before = query(built_db, count_sql, (device, 1, old_hour))[0][0]
    rows_before = query(built_db, "select count(*) from analytics.fct_readings_hourly")[0][0]
    with psycopg.connect(built_db.url) as conn:
        for k in range(2):
            ts = old_hour + 0.123 + k
            raw = insert_raw(conn, {"device_id": device, "event_type": TICKS, "value": 40.0 + k, "timestamp": ts})
            insert_fact(conn, raw, device, TICKS, ts, 40.0 + k)
        raw = insert_raw(conn, {"device_id": device, "event_type": MM, "value": 1.5, "timestamp": new_hour})
        insert_fact(conn, raw, device, MM, new_hour, 1.5)
        conn.commit()
    # The model, its data tests and assert_rollup_counts_match_facts, in one invocation.
    result = run_dbt(built_db, ["build", "--select", "fct_readings_hourly"], dbt_dir, vars=as_of_vars, check=False)
    assert result.returncode == 0, result.stdout[-4000:]
    assert query(built_db, count_sql, (device, 1, old_hour))[0][0] == before + 2
    assert query(built_db, count_sql, (device, 2, new_hour))[0][0] == 1
    rows_after = query(built_db, "select count(*) from analytics.fct_readings_hourly")[0][0]
    assert rows_after == rows_before + 1 + (before == 0)
    ran = {r["unique_id"].split(".")[-1] for r in _results(dbt_dir)}
    assert "assert_rollup_counts_match_facts" in ran


# --- the key figures come from one watermark -------------------------------------------------

KEY_FIGURES = "select * from analytics.fct_rollout_key_figures"


def _key_figures(target: DatabaseTarget) -> dict[str, Any]:
    with psycopg.connect(target.url) as conn:
        cur = conn.execute(KEY_FIGURES)
        rows = cur.fetchall()
        assert len(rows) == 1, rows
        return dict(zip([c.name for c in cur.description or ()], rows[0], strict=True))


def test_key_figures_count_only_facts_up_to_the_rollups_watermark(
    built_db: DatabaseTarget, scenario: Scenario, dbt_dir: Path, as_of_vars: dict[str, Any]
) -> None:
    """Facts that arrive after the rollup was built change no key figure until the rollup has them:
    the last hour's side switches can never run ahead of the all-time count (they did when the two
    tables were built seconds apart while data streamed in)."""
    key_figures = ["build", "--select", "fct_rollout_key_figures"]
    result = run_dbt(built_db, key_figures, dbt_dir, vars=as_of_vars, check=False)  # up to the rollup as it is
    assert result.returncode == 0, result.stdout[-4000:]
    before = _key_figures(built_db)
    (watermark,) = query(built_db, "select max(last_ingested_at) from analytics.fct_readings_hourly")[0]
    assert before["data_as_of"] == watermark
    assert 0 < before["side_switches_last_hour"] <= before["side_switches_total"]
    # The upgraded device switches sides four more times (5, -5, 5, -5 between its last scenario
    # reading and the later one the rollup test added), observed and ingested now: after the watermark.
    device, now = scenario.upgraded_device, datetime.now(UTC).timestamp()
    with psycopg.connect(built_db.url) as conn:
        for k, value in enumerate((5.0, -5.0, 5.0, -5.0)):
            ts = now - 60 + k
            raw = insert_raw(conn, {"device_id": device, "event_type": MM, "value": value, "timestamp": ts})
            insert_fact(conn, raw, device, MM, ts, value)
        conn.commit()
    result = run_dbt(built_db, key_figures, dbt_dir, vars=as_of_vars, check=False)
    assert result.returncode == 0, result.stdout[-4000:]
    assert _key_figures(built_db) == before  # the rollup has not seen them: no figure moved
    # Once the rollup has them, the watermark moves and both counts take the four switches.
    result = run_dbt(built_db, ["build", "--select", "fct_readings_hourly+"], dbt_dir, vars=as_of_vars, check=False)
    assert result.returncode == 0, result.stdout[-4000:]
    after = _key_figures(built_db)
    assert after["data_as_of"] > before["data_as_of"]
    assert after["side_switches_total"] == before["side_switches_total"] + 4
    # The last hour moves with the watermark: older switches may leave it while the new four enter.
    assert 4 <= after["side_switches_last_hour"] <= before["side_switches_last_hour"] + 4
    assert after["side_switches_last_hour"] <= after["side_switches_total"]


def test_key_figures_test_fails_when_the_last_hour_exceeds_all_time(
    built_db: DatabaseTarget, dbt_dir: Path, as_of_vars: dict[str, Any]
) -> None:
    with psycopg.connect(built_db.url) as conn:
        conn.execute("update analytics.fct_rollout_key_figures set side_switches_last_hour = side_switches_total + 1")
        conn.commit()
    result = run_dbt(built_db, ["test", "--select", "fct_rollout_key_figures"], dbt_dir, vars=as_of_vars, check=False)
    failed = {r["unique_id"].split(".")[-2] for r in _results(dbt_dir) if r["status"] == "fail"}
    assert result.returncode != 0
    assert failed == {"not_greater_than_fct_rollout_key_figures_side_switches_last_hour__side_switches_total"}


# --- each singular test fails when its invariant is broken -----------------------------------
# Last in the module: the ledger is append-only, so the breaks cannot be undone. All three are
# broken first and checked with one `dbt test` (each dbt start costs seconds); the failure
# counts show each test caught exactly its own break.


def _results(dbt_dir: Path, name: str = "run_results.json") -> list[dict[str, Any]]:
    return list(json.loads((dbt_dir / name).read_text())["results"])


def test_singular_tests_fail_when_invariants_break(
    built_db: DatabaseTarget, dbt_dir: Path, as_of_vars: dict[str, Any]
) -> None:
    build = {r["unique_id"].split(".")[-1]: r["status"] for r in _results(dbt_dir, "build_results.json")}
    with psycopg.connect(built_db.url) as conn:
        # 1. a raw row with no outcome (a silent drop) and one with two outcomes (a double write)
        insert_raw(conn, {"device_id": 1, "event_type": TICKS, "value": 1.0, "timestamp": 1.7e9}, "orphan")
        raw = insert_raw(conn, {"device_id": 1, "event_type": TICKS, "value": 2.0, "timestamp": 1.7e9 + 1})
        conn.execute(
            "insert into ingest.raw_duplicate (raw_record_id, processed_record_id) "
            "values (%s, (select min(id) from ingest.processed_record))",
            (raw,),
        )
        conn.execute(
            "insert into ingest.ingest_error (raw_record_id, reason, detail) values (%s, 'wrong_type', 'x')", (raw,)
        )
        # 2. a fact the rollup has missed (in an hour of its own): ingested before the rollup's newest
        # fact, so not one that merely arrived after the build
        raw = insert_raw(conn, {"device_id": 2, "event_type": MM, "value": 3.0, "timestamp": 1.7e9 + 2})
        missed = insert_fact(conn, raw, 2, MM, 1.7e9 + 2, 3.0)
        conn.execute(
            "update ingest.processed_record set ingested_at = "
            "(select min(last_ingested_at) from analytics.fct_readings_hourly) where id = %s",
            (missed,),
        )
        # and one that arrived after the build: the next run's work, not a failure
        raw = insert_raw(conn, {"device_id": 3, "event_type": MM, "value": 4.0, "timestamp": 1.7e9 + 3})
        insert_fact(conn, raw, 3, MM, 1.7e9 + 3, 4.0)
        # 3. a regression in the published conversion: ticks / 10 instead of / 20
        view = conn.execute("select pg_get_viewdef('analytics.v_platform_extension_mm'::regclass)").fetchone()
        assert view
        conn.execute(
            "create or replace view analytics.v_platform_extension_mm as "
            "select device_id, observed_at, source_type, source_format, source_value, "
            "case when source_type = 'platform_extension_ticks' then source_value / 10 else extension_mm end "
            "as extension_mm, is_calibrated, processed_record_id, ingested_at "
            "from analytics_staging.int_readings_unified_mm"
        )
        conn.commit()
    result = run_dbt(built_db, ["test", "--select", "test_type:singular"], dbt_dir, vars=as_of_vars, check=False)
    assert result.returncode != 0
    after = {r["unique_id"].split(".")[-1]: (r["status"], r["failures"]) for r in _results(dbt_dir)}
    one_outcome = "assert_each_raw_record_has_exactly_one_outcome"
    rollup = "assert_rollup_counts_match_facts"
    unified = "assert_unified_mm_equals_native_value_for_uncalibrated_devices"
    assert build[one_outcome] == build[rollup] == build[unified] == "pass"
    assert after[one_outcome] == ("fail", 2)  # the orphan and the double outcome
    assert after[rollup] == ("fail", 1)  # the one hour holding the unseen fact
    ticks_facts = query(
        built_db,
        "select count(*) from analytics.v_platform_extension_mm "
        "where source_type = 'platform_extension_ticks' and source_value <> 0",
    )[0][0]
    assert after[unified] == ("fail", ticks_facts)
