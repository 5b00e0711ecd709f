"""The ledger replay as a Dagster job: `iot-platform replay` with run config, then the marts rebuilt.

Two steps: `replay_ledger` runs ingest_service.lifecycle.replay (the same selection as the CLI; its
counts are the step's output metadata), then `rebuild_after_replay` runs `dbt build` of every model
downstream of the ingest tables a replay writes, with their tests, when the replay changed
anything. The dbt events are reported as materializations and checks of the dbt assets, so the
asset catalog shows the rebuilt marts. The incremental hourly rollup is among them: replayed facts
are ingested now (`ingested_at`), so its watermark takes their hours.

The run's database login writes the replay: it needs the `iot_ingest` group's grants (docs/security.md).
"""

from datetime import datetime
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource

from ingest_service.core.config import Settings
from ingest_service.lifecycle import replay
from orchestration.defs.dbt.assets import translator
from orchestration.defs.dbt.project import dbt_project
from orchestration.lib.dbt.args import EXCLUDE_UNIT_TESTS
from orchestration.lib.postgres import PostgresResource

# The staging models over what a replay writes, with `@`: everything downstream of them (marts,
# the rollup) and everything those need (the other staging views, the seeds), so the build also
# works on a database the hourly job has not built yet.
REPLAYED_MODELS = [
    "@stg_ingest__processed_records",
    "@stg_ingest__raw_duplicates",
    "@stg_ingest__ingest_errors",
    "@stg_ingest__outcome_supersessions",
    "@stg_ingest__replay_runs",
]


class ReplayConfig(dg.Config):
    """The selection of `iot-platform replay` (every replayable current error when all are empty)."""

    reasons: list[str] = []
    since: str | None = None  # ISO 8601
    until: str | None = None
    device_ids: list[int] = []
    event_types: list[str] = []
    dry_run: bool = False
    batch_size: int = replay.DEFAULT_BATCH_SIZE
    resume_run_id: int | None = None

    def selection(self) -> "replay.Selection":
        return replay.Selection(
            reasons=tuple(self.reasons),
            since=datetime.fromisoformat(self.since) if self.since else None,
            until=datetime.fromisoformat(self.until) if self.until else None,
            device_ids=tuple(self.device_ids),
            event_types=tuple(self.event_types),
        )


@dg.op(out=dg.Out(int, description="Rows the replay changed (facts, duplicates, other errors)."))
def replay_ledger(context: dg.OpExecutionContext, config: ReplayConfig, postgres: PostgresResource) -> dg.Output[int]:
    """Replay the selected ledger rows (ingest_service/lifecycle/replay.py)."""
    try:
        result = replay.run(
            postgres.conninfo,
            # Only the decision rules are read (clock skew, the startup limits); never a secret.
            Settings(dev_mode=True),
            config.selection(),
            requested_by=f"dagster run {context.run_id}",
            dry_run=config.dry_run,
            batch_size=config.batch_size,
            resume=config.resume_run_id,
            out=context.log.info,
        )
    except replay.ReplayError as exc:
        raise dg.Failure(description=str(exc)) from exc
    for line in replay.summary(result):
        context.log.info(line)
    counts = result.tally.counts()
    changed = 0 if result.dry_run else counts["facts"] + counts["duplicates"] + counts["errors_changed"]
    metadata: dict[str, Any] = {
        **counts,
        "replay_run_id": result.run_id,
        "dry_run": result.dry_run,
        "by_reason": dg.MetadataValue.json({r: dict(c) for r, c in result.tally.by_reason.items()}),
        "rows_per_second": round(counts["selected"] / result.elapsed, 1) if result.elapsed else 0.0,
    }
    return dg.Output(changed, metadata=metadata)


@dg.op(out={})
def rebuild_after_replay(context: dg.OpExecutionContext, dbt: DbtCliResource, changed: int):
    """`dbt build` of the models downstream of what the replay wrote, when it changed anything."""
    if changed == 0:
        context.log.info("the replay changed nothing: no rebuild")
        return
    args = ["build", *EXCLUDE_UNIT_TESTS, "--select", " ".join(REPLAYED_MODELS)]
    yield from dbt.cli(
        args, manifest=dbt_project.manifest_path, dagster_dbt_translator=translator, context=context
    ).stream()


@dg.job(description="Replay ledger rows whose current outcome is an error, then rebuild the marts they feed.")
def ledger_replay_job() -> None:
    rebuild_after_replay(replay_ledger())
