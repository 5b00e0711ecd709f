"""dbt over a replayed ledger: staging keeps the current outcomes, ingest_parse and the error-rate
mart show them, int_superseded_outcomes the history, and the ledger test holds; and it fails when
an outcome is added beside a current error without superseding it."""

from __future__ import annotations

import re

import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget
from ingest_service.lifecycle import replay
from ingest_service.main import create_app
from tests.dbt.helpers import run_dbt
from tests.ingest_service.conftest import make_settings
from tests.utils.events import telemetry

T0 = 1_767_225_600.0
MODELS = ["path:models/staging", "+ingest_parse", "+fct_ingest_error_rate_daily", "+int_superseded_outcomes"]
LEDGER_TEST = "assert_each_raw_record_has_exactly_one_outcome"


@pytest.mark.slow
def test_marts_show_current_outcomes_and_the_history(fresh_db: DatabaseTarget, tmp_path) -> None:
    with TestClient(create_app(make_settings(fresh_db))) as client:
        events = [telemetry(5, "platform_tilt_deg", v, T0 + i) for i, v in enumerate([10.0, 20.0, 500.0])]
        assert client.post("/ingest", json=events).status_code == 200
    with psycopg.connect(fresh_db.url, autocommit=True) as db:
        db.execute(
            "insert into ingest.record_type (id, name, unit, min_value, max_value, payload_format, measure)"
            " values (50, 'platform_tilt_deg', 'deg', -90, 90, 'common', 'tilt')"
        )
        replay.run(fresh_db.url, Settings(dev_mode=True), replay.Selection(), requested_by="t", out=lambda _: None)

        run_dbt(fresh_db, ["build", "--indirect-selection", "cautious", "--select", *MODELS, LEDGER_TEST], tmp_path)
        parsed = db.execute("select outcome, reason, count(*) from analytics.ingest_parse group by 1, 2 order by 1")
        assert parsed.fetchall() == [("error", "value_out_of_range", 1), ("processed", None, 2)]
        rates = db.execute("select reason, errors from analytics.fct_ingest_error_rate_daily").fetchall()
        assert rates == [("value_out_of_range", 1)]
        history = db.execute(
            "select reason, superseded_by_outcome, detail from analytics_staging.int_superseded_outcomes"
            " order by raw_record_id"
        ).fetchall()
        assert [(r, o) for r, o, _ in history] == [("unknown_event_type", "fact")] * 2 + [
            ("unknown_event_type", "error")
        ]
        assert all("platform_tilt_deg" in detail for _, _, detail in history)

        # An outcome beside a current error, with no supersession: two current outcomes.
        raw_id = db.execute("select raw_record_id from ingest.current_ingest_error").fetchone()
        assert raw_id is not None
        db.execute(
            "insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value)"
            " values (%s, 5, 50, now(), 1)",
            raw_id,
        )
    result = run_dbt(
        fresh_db,
        ["build", "--indirect-selection", "cautious", "--select", "path:models/staging", LEDGER_TEST],
        tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert re.search(rf"FAIL 1 {LEDGER_TEST}", result.stdout), result.stdout[-3000:]


def _parse_and_rates(db: psycopg.Connection) -> tuple[list[tuple], list[tuple]]:
    parsed = db.execute("select raw_record_id, outcome, reason from analytics.ingest_parse order by 1").fetchall()
    rates = db.execute(
        "select report_date, reason, errors from analytics.fct_ingest_error_rate_daily order by 1, 2"
    ).fetchall()
    return parsed, rates


@pytest.mark.slow
def test_the_replayed_days_rebuild_the_incremental_marts(fresh_db: DatabaseTarget, tmp_path) -> None:
    """The replayed rows were received before the marts' watermark (lookback 0 here): an incremental
    build leaves their errors; with the replay's `days` as reprocess_days it shows the facts and
    equals a --full-refresh build."""
    marts = ["+ingest_parse", "+fct_ingest_error_rate_daily"]
    no_lookback = {"rollup_lookback_minutes": 0}
    with TestClient(create_app(make_settings(fresh_db))) as client:
        events = [telemetry(5, "platform_tilt_deg", float(i), T0 + i) for i in range(3)]
        assert client.post("/ingest", json=events).status_code == 200
        later = [telemetry(5, "platform_tilt_deg", 1.0, T0 + 10), telemetry(5, "platform_tilt_deg", 2.0, T0 + 11)]
        assert client.post("/ingest", json=later).status_code == 200
    run_dbt(fresh_db, ["run", "--select", *marts], tmp_path, vars=no_lookback)
    with psycopg.connect(fresh_db.url, autocommit=True) as db:
        db.execute(
            "insert into ingest.record_type (id, name, unit, min_value, max_value, payload_format, measure)"
            " values (50, 'platform_tilt_deg', 'deg', -90, 90, 'common', 'tilt')"
        )
        result = replay.run(fresh_db.url, Settings(dev_mode=True), replay.Selection(), requested_by="t", out=print)
        received = db.execute("select distinct (received_at at time zone 'UTC')::date::text from ingest.raw_record")
        assert result.days == sorted({"2026-01-01", *(day for (day,) in received.fetchall())})

        # Without the days, the incremental marts keep the old errors (received before their watermark).
        run_dbt(fresh_db, ["run", "--select", *marts], tmp_path, vars=no_lookback)
        stale, _ = _parse_and_rates(db)
        assert {outcome for _, outcome, _ in stale} == {"error"}

        run_dbt(fresh_db, ["run", "--select", *marts], tmp_path, vars={**no_lookback, "reprocess_days": result.days})
        incremental = _parse_and_rates(db)
        assert {outcome for _, outcome, _ in incremental[0]} == {"processed"}
        assert incremental[1] == []
        run_dbt(fresh_db, ["run", "--full-refresh", "--select", *marts], tmp_path, vars=no_lookback)
        assert _parse_and_rates(db) == incremental
