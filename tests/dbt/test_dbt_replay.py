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
