"""The ledger replay job (orchestration/defs/lifecycle/replay.py): run config is the CLI's
selection, the counts are the replay step's metadata, and the marts are rebuilt after a change."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from tests.orchestration.conftest import post
from tests.utils.events import telemetry
from tests.utils.ledger import assert_one_outcome_per_raw_row

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def job() -> dg.JobDefinition:
    from orchestration.definitions import defs

    return defs().resolve_job_def("ledger_replay_job")


def _unknown_then_known(target: DatabaseTarget, n: int) -> None:
    post(target, [[telemetry(3, "platform_tilt_deg", 1.0, T0 + i) for i in range(n)]])
    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute(
            "insert into ingest.record_type (id, name, unit, min_value, max_value, payload_format, measure)"
            " values (50, 'platform_tilt_deg', 'deg', -90, 90, 'common', 'tilt')"
        )


def _config(**replay: object) -> dict:
    return {"ops": {"replay_ledger": {"config": replay}}}


def _replay_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [output] = [e for e in result.all_events if e.is_successful_output and e.step_key == "replay_ledger"]
    return {k: v.value for k, v in output.event_specific_data.metadata.items()}  # type: ignore[union-attr]


def test_a_dry_run_reports_by_reason_and_rebuilds_nothing(dagster_env: DatabaseTarget, job, instance) -> None:
    _unknown_then_known(dagster_env, 5)
    result = job.execute_in_process(run_config=_config(reasons=["unknown_event_type"], dry_run=True), instance=instance)
    assert result.success
    metadata = _replay_metadata(result)
    assert (metadata["selected"], metadata["facts"], metadata["dry_run"]) == (5, 5, True)
    assert metadata["by_reason"] == {"unknown_event_type": {"fact": 5}}
    assert not result.get_asset_materialization_events()
    with psycopg.connect(dagster_env.url) as conn:
        assert conn.execute("select count(*) from ingest.processed_record").fetchone() == (0,)


def test_a_bad_selection_fails_the_run(dagster_env: DatabaseTarget, job, instance) -> None:
    result = job.execute_in_process(
        run_config=_config(reasons=["invalid_json"]), instance=instance, raise_on_error=False
    )
    assert not result.success


@pytest.mark.slow
def test_the_replay_job_writes_facts_and_rebuilds_the_marts(dagster_env: DatabaseTarget, job, instance) -> None:
    _unknown_then_known(dagster_env, 20)
    result = job.execute_in_process(run_config=_config(reasons=["unknown_event_type"]), instance=instance)
    assert result.success
    metadata = _replay_metadata(result)
    assert (metadata["selected"], metadata["facts"], metadata["dry_run"]) == (20, 20, False)
    # The days it touched, the rebuild's reprocess_days: the rows' received day, the facts' 2026-01-01.
    assert metadata["days"] == sorted({"2026-01-01", datetime.now(UTC).date().isoformat()})
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"ingest_parse", "fct_ingest_error_rate_daily", "staging/int_superseded_outcomes"} <= materialized
    with psycopg.connect(dagster_env.url) as conn:
        assert_one_outcome_per_raw_row(conn)
        parsed = conn.execute("select outcome, count(*) from analytics.ingest_parse group by 1").fetchall()
        assert parsed == [("processed", 20)]
        history = conn.execute(
            "select reason, superseded_by_outcome, count(*)"
            " from analytics_staging.int_superseded_outcomes group by 1, 2"
        ).fetchall()
        assert history == [("unknown_event_type", "fact", 20)]
    # Nothing left to replay: the second run changes nothing and rebuilds nothing.
    again = job.execute_in_process(run_config=_config(reasons=["unknown_event_type"]), instance=instance)
    assert _replay_metadata(again)["selected"] == 0 and not again.get_asset_materialization_events()
