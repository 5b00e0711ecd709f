"""The ledger replay as a Dagster job: `iot-platform replay` with run config, then the marts rebuilt.

Two steps: `replay_ledger` runs `iot-platform replay --json` as a subprocess on the `postgres`
resource's database, as the lifecycle assets run their commands (assets.py), so orchestration/
imports nothing of the API's package (the selection is the CLI's options; the counts, the command's
JSON, are the step's output metadata), then `rebuild_after_replay` runs `dbt build` of every model
downstream of the ingest tables a replay writes, with their tests, when the replay changed
anything. The dbt events are reported as materializations and checks of the dbt assets, so the
asset catalog shows the rebuilt marts. The incremental hourly rollup is among them: replayed facts
are ingested now (`ingested_at`), so its watermark takes their hours.

The run's database login writes the replay: it needs the `iot_ingest` group's grants (docs/security.md).
"""

from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource

from orchestration.defs.dbt.assets import translator
from orchestration.defs.dbt.project import dbt_project
from orchestration.defs.lifecycle.assets import LifecycleFailed, run_command
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
    since: str | None = None  # ISO 8601, UTC without an offset
    until: str | None = None
    device_ids: list[int] = []
    event_types: list[str] = []
    dry_run: bool = False
    batch_size: int = 1000  # the CLI's default
    resume_run_id: int | None = None

    def args(self) -> list[str]:
        """The options of `iot-platform replay` for this selection."""
        args = [arg for reason in self.reasons for arg in ("--reason", reason)]
        args += [arg for device in self.device_ids for arg in ("--device", str(device))]
        args += [arg for event_type in self.event_types for arg in ("--event-type", event_type)]
        args += ["--since", self.since] if self.since else []
        args += ["--until", self.until] if self.until else []
        args += ["--resume", str(self.resume_run_id)] if self.resume_run_id is not None else []
        args += ["--dry-run"] if self.dry_run else []
        return [*args, "--batch-size", str(self.batch_size)]


@dg.op(out=dg.Out(int, description="Rows the replay changed (facts, duplicates, other errors)."))
def replay_ledger(context: dg.OpExecutionContext, config: ReplayConfig, postgres: PostgresResource) -> dg.Output[int]:
    """Replay the selected ledger rows (`iot-platform replay --json`)."""
    try:
        out = run_command(postgres, "replay", *config.args(), "--requested-by", f"dagster run {context.run_id}")
    except LifecycleFailed as exc:
        raise dg.Failure(description=str(exc)) from exc
    counts = {
        key: int(out[key]) for key in ("selected", "facts", "duplicates", "errors_changed", "unchanged", "skipped")
    }
    changed = 0 if out["dry_run"] else counts["facts"] + counts["duplicates"] + counts["errors_changed"]
    context.log.info(f"replay run {out['run_id']}: changed {changed} of {counts['selected']} rows")
    elapsed = float(out["elapsed_seconds"])
    metadata: dict[str, Any] = {
        **counts,
        "replay_run_id": out["run_id"],
        "dry_run": out["dry_run"],
        "by_reason": dg.MetadataValue.json(out["by_reason"]),
        "rows_per_second": round(counts["selected"] / elapsed, 1) if elapsed else 0.0,
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
