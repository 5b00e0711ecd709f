"""One check per metric model: the model's rows equal the values computed in Python from the events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from ingest_service.core.database import DatabaseTarget
from tests.dbt.events import TICKS
from tests.dbt.helpers import query

Check = Callable[[DatabaseTarget, dict[str, Any]], None]
CHECKS: dict[str, Check] = {}


def approx(value: Any) -> Any:
    return pytest.approx(value, rel=1e-9, abs=1e-9)


def epoch(ts: datetime) -> float:
    return ts.timestamp()


def check(fn: Check) -> Check:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


@check
def check_metric_counts_by_format(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(db, "select source_type, reading_count, device_count from analytics.metric_counts_by_format")
    assert {r[0]: (r[1], r[2]) for r in rows} == {k: v for k, v in exp["counts_by_format"].items() if v[0]}


@check
def check_metric_devices_both_formats(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db, "select device_id, legacy_ticks_readings, new_mm_readings from analytics.metric_devices_both_formats"
    )
    assert {r[0]: (r[1], r[2]) for r in rows} == exp["both_formats"]
    assert exp["both_formats"], "the scenario must have a device on both formats"


@check
def check_metric_recent_unified_readings(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db, "select device_id, extension_mm from analytics.metric_recent_unified_readings order by recency_rank"
    )
    assert [(r[0], approx(r[1])) for r in rows] == exp["recent"]


@check
def check_metric_avg_extension_by_source(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db,
        "select device_id, avg_new_only_mm, avg_legacy_only_mm, avg_all_mm "
        "from analytics.metric_avg_extension_by_source",
    )
    got = {r[0]: tuple(None if v is None else approx(v) for v in r[1:]) for r in rows}
    assert got == exp["avg_by_source"]


@check
def check_metric_avg_extension_mm(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(db, "select device_id, avg_extension_mm from analytics.metric_avg_extension_mm")
    assert {r[0]: approx(r[1]) for r in rows} == {d: v[2] for d, v in exp["avg_by_source"].items()}


@check
def check_metric_side_switches(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db, "select device_id, left_to_right, right_to_left, total_side_switches from analytics.metric_side_switches"
    )
    assert {r[0]: tuple(r[1:]) for r in rows} == exp["side_switches"]
    assert any(v[2] for v in exp["side_switches"].values())


@check
def check_metric_side_switches_last_hour(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db,
        "select device_id, left_to_right, right_to_left, total_side_switches "
        "from analytics.metric_side_switches_last_hour",
    )
    assert {r[0]: tuple(r[1:]) for r in rows} == exp["side_switches_last_hour"]
    assert exp["side_switches_last_hour"]


@check
def check_metric_extension_vs_retraction(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db, "select device_id, extensions, retractions, unchanged from analytics.metric_extension_vs_retraction"
    )
    assert {r[0]: tuple(r[1:]) for r in rows} == exp["extension_vs_retraction"]


@check
def check_metric_battery_summary(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db,
        "select device_id, min_pct, max_pct, avg_pct, reading_count, last_seen_at "
        "from analytics.metric_battery_summary",
    )
    got = {r[0]: (approx(r[1]), approx(r[2]), approx(r[3]), r[4], pytest.approx(epoch(r[5]), abs=1e-3)) for r in rows}
    assert got == exp["battery"]


@check
def check_metric_platform_height(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db,
        "select device_id, min_height_mm, max_height_mm, avg_height_mm, reading_count "
        "from analytics.metric_platform_height",
    )
    got = {r[0]: (approx(r[1]), approx(r[2]), approx(r[3]), r[4]) for r in rows}
    assert got == {d: v[:4] for d, v in exp["height"].items()}


@check
def check_fct_rollout_format_share_daily(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db,
        "select report_date, payload_format, devices, readings, total_devices, total_readings, device_share, "
        "reading_share from analytics.fct_rollout_format_share_daily",
    )
    got = {(r[0], r[1]): (*r[2:6], approx(r[6]), approx(r[7])) for r in rows}
    assert got == exp["format_share_daily"]


@check
def check_fct_rollout_device_state_daily(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db,
        "select report_date, legacy_only_devices, new_only_devices, migrated_devices, total_devices "
        "from analytics.fct_rollout_device_state_daily",
    )
    assert {r[0]: tuple(r[1:]) for r in rows} == exp["device_state_daily"]


@check
def check_fct_ingest_error_rate_daily(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    # Summed over days: the day of receipt is the test's wall clock, which Python does not model.
    rows = query(
        db,
        "select payload_format, sum(errors)::int, "
        "sum(errors::double precision / error_rate)::int "
        "from analytics.fct_ingest_error_rate_daily group by payload_format",
    )
    errors = {r[0]: r[1] for r in rows}
    assert errors == exp["errors_by_format"]
    raw = dict(query(db, "select payload_format, count(*)::int from analytics.ingest_parse group by 1"))
    assert raw == exp["raw_by_format"]


@check
def check_fct_ingest_error_rate_daily_by_reason(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(
        db, "select payload_format, reason, sum(errors)::int from analytics.fct_ingest_error_rate_daily group by 1, 2"
    )
    assert {(r[0], r[1]): r[2] for r in rows} == exp["errors_by_format_reason"]


@check
def check_ingest_parse(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(db, "select outcome, count(*)::int from analytics.ingest_parse group by 1")
    assert dict(rows) == exp["outcomes"]


@check
def check_fct_readings_hourly(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(db, "select device_id, record_type_id, hour_start, reading_count from analytics.fct_readings_hourly")
    assert {(r[0], r[1], r[2]): r[3] for r in rows} == exp["hourly_counts"]


@check
def check_v_platform_extension_mm(db: DatabaseTarget, exp: dict[str, Any]) -> None:
    rows = query(db, "select source_type, source_value, extension_mm from analytics.v_platform_extension_mm")
    assert len(rows) == sum(v[0] for v in exp["counts_by_format"].values())
    for source_type, source_value, extension_mm in rows:
        assert extension_mm == (source_value / 20.0 if source_type == TICKS else source_value)
