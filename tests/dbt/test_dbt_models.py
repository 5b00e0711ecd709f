"""dbt on a database written with plain SQL (tests/dbt/helpers.load_via_sql): every metric equals
its Python computation, the incremental rollup merges late data, and each singular test fails
when its invariant is broken.

Needs no API, so it guards the models while the ingest path changes; test_dbt_ingest_e2e.py runs
the same metric checks on data that went through POST /ingest.
"""

from __future__ import annotations

import time
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
    yield module_db


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_metric_equals_python_computation(built_db: DatabaseTarget, scenario: Scenario, name: str) -> None:
    CHECKS[name](built_db, expected(scenario))


def test_build_ran_unit_tests(built_db: DatabaseTarget, dbt_dir: Path) -> None:
    import json

    results = json.loads((dbt_dir / "run_results.json").read_text())["results"]
    unit = [r for r in results if r["unique_id"].startswith("unit_test.")]
    assert len(unit) >= 7
    assert all(r["status"] == "pass" for r in unit)


def test_incremental_rollup_merges_a_late_hour(
    built_db: DatabaseTarget, scenario: Scenario, dbt_dir: Path, as_of_vars: dict[str, Any]
) -> None:
    device = scenario.upgraded_device
    old_hour = scenario.as_of - 20 * 3600
    before = query(
        built_db,
        "select coalesce(sum(reading_count), 0)::int from analytics.fct_readings_hourly "
        "where device_id = %s and record_type_id = 1 and hour_start = date_trunc('hour', to_timestamp(%s), 'UTC')",
        (device, old_hour),
    )[0][0]
    rows_before = query(built_db, "select count(*) from analytics.fct_readings_hourly")[0][0]
    with psycopg.connect(built_db.url) as conn:
        # ingested_at is the transaction time: make the late facts visibly newer than the watermark.
        time.sleep(0.01)
        for k in range(2):
            ts = old_hour + 0.123 + k
            raw = insert_raw(conn, {"device_id": device, "event_type": TICKS, "value": 40.0 + k, "timestamp": ts})
            insert_fact(conn, raw, device, TICKS, ts, 40.0 + k)
        ts = scenario.as_of + 5.5
        raw = insert_raw(conn, {"device_id": device, "event_type": MM, "value": 1.5, "timestamp": ts})
        insert_fact(conn, raw, device, MM, ts, 1.5)
        conn.commit()
    run_dbt(built_db, ["run", "--select", "fct_readings_hourly"], dbt_dir, vars=as_of_vars)
    after = query(
        built_db,
        "select reading_count from analytics.fct_readings_hourly "
        "where device_id = %s and record_type_id = 1 and hour_start = date_trunc('hour', to_timestamp(%s), 'UTC')",
        (device, old_hour),
    )
    assert after == [(before + 2,)]
    rows_after = query(built_db, "select count(*) from analytics.fct_readings_hourly")[0][0]
    assert rows_after in (rows_before + 1, rows_before + 2)  # the new hour; the old one only if it was empty
    result = run_dbt(built_db, ["test", "--select", "assert_rollup_counts_match_facts"], dbt_dir, check=False)
    assert result.returncode == 0, result.stdout[-4000:]


# --- each singular test fails when its invariant is broken -----------------------------------
# These run last in the module: they leave the database broken (the ledger is append-only).


def _singular(db: DatabaseTarget, dbt_dir: Path, name: str) -> int:
    result = run_dbt(db, ["test", "--select", name], dbt_dir, check=False)
    return result.returncode


def test_singular_tests_pass_on_consistent_data(built_db: DatabaseTarget, dbt_dir: Path) -> None:
    for name in (
        "assert_each_raw_record_has_exactly_one_outcome",
        "assert_unified_mm_equals_native_value_for_uncalibrated_devices",
        "assert_rollup_counts_match_facts",
    ):
        assert _singular(built_db, dbt_dir, name) == 0, name


def test_raw_record_without_outcome_fails_one_outcome_test(built_db: DatabaseTarget, dbt_dir: Path) -> None:
    with psycopg.connect(built_db.url) as conn:
        insert_raw(conn, {"device_id": 1, "event_type": TICKS, "value": 1.0, "timestamp": 1.7e9}, "orphan")
        conn.commit()
    assert _singular(built_db, dbt_dir, "assert_each_raw_record_has_exactly_one_outcome") != 0


def test_raw_record_with_two_outcomes_fails_one_outcome_test(built_db: DatabaseTarget, dbt_dir: Path) -> None:
    with psycopg.connect(built_db.url) as conn:
        raw = insert_raw(conn, {"device_id": 1, "event_type": TICKS, "value": 2.0, "timestamp": 1.7e9 + 1})
        insert_fact(conn, raw, 1, TICKS, 1.7e9 + 1, 2.0)
        conn.execute(
            "insert into ingest.ingest_error (raw_record_id, reason, detail) values (%s, 'wrong_type', 'x')", (raw,)
        )
        conn.commit()
    assert _singular(built_db, dbt_dir, "assert_each_raw_record_has_exactly_one_outcome") != 0


def test_fact_missing_from_rollup_fails_rollup_count_test(built_db: DatabaseTarget, dbt_dir: Path) -> None:
    assert _singular(built_db, dbt_dir, "assert_rollup_counts_match_facts") == 0
    with psycopg.connect(built_db.url) as conn:
        raw = insert_raw(conn, {"device_id": 2, "event_type": MM, "value": 3.0, "timestamp": 1.7e9 + 2})
        insert_fact(conn, raw, 2, MM, 1.7e9 + 2, 3.0)
        conn.commit()
    assert _singular(built_db, dbt_dir, "assert_rollup_counts_match_facts") != 0


def test_wrong_conversion_fails_unified_mm_test(
    built_db: DatabaseTarget, dbt_dir: Path, as_of_vars: dict[str, Any]
) -> None:
    # A regression in the conversion (here: the default resolution changed to 10 ticks/mm).
    run_dbt(built_db, ["run", "--select", "int_readings_converted+", "--exclude", "fct_readings_hourly+"], dbt_dir,
            vars={**as_of_vars, "default_ticks_per_mm": 10})
    try:
        assert _singular(built_db, dbt_dir, "assert_unified_mm_equals_native_value_for_uncalibrated_devices") != 0
    finally:
        run_dbt(built_db, ["run", "--select", "int_readings_converted+", "--exclude", "fct_readings_hourly+"],
                dbt_dir, vars=as_of_vars)
    assert _singular(built_db, dbt_dir, "assert_unified_mm_equals_native_value_for_uncalibrated_devices") == 0
