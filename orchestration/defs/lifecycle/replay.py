"""The ledger replay as a Dagster job: `iot-platform replay` with run config, then the marts rebuilt.

Two steps: `replay_ledger` runs `iot-platform replay --json` as a subprocess on the `postgres`
resource's database, as the lifecycle assets run their commands (assets.py), so orchestration/
imports nothing of the API's package (the selection is the CLI's options; the counts, the command's
JSON, are the step's output metadata), then `rebuild_after_replay` runs `dbt build` of every model
downstream of the ingest tables a replay writes, with their tests, when the replay changed
anything. The dbt events are reported as materializations and checks of the dbt assets, so the
asset catalog shows the rebuilt marts. The incremental marts rebuild the days the replay touched
(its JSON's `days`: the received days of the rows it replayed, the record days of the facts it
wrote) as the hourly job's `reprocess_days` does (the dbt var), not only what arrived since their
watermarks: a replayed row keeps its old `received_at`. The tests read the hourly job's window
widened to those days.

The run's database login writes the replay: it needs the `iot_ingest` group's grants (docs/security.md).
"""

import json
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource

from orchestration.defs.dbt.assets import dbt_test_window, incremental_test_window, translator
from orchestration.defs.dbt.project import dbt_project
from orchestration.defs.lifecycle.assets import LifecycleFailed, run_command
from orchestration.lib.dbt.args import EXCLUDE_UNIT_TESTS, hourly_dbt_vars
from orchestration.lib.dbt.cli import prune_invocation_folders
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


@dg.op(out=dg.Out(list[str], description="The UTC days the replay touched (none when it changed nothing)."))
def replay_ledger(
    context: dg.OpExecutionContext, config: ReplayConfig, postgres: PostgresResource
) -> dg.Output[list[str]]:
    """Replay the selected ledger rows (`iot-platform replay --json`)."""
    try:
        out = run_command(postgres, "replay", *config.args(), "--requested-by", f"dagster run {context.run_id}")
    except LifecycleFailed as exc:
        raise dg.Failure(description=str(exc)) from exc
    counts = {
        key: int(out[key]) for key in ("selected", "facts", "duplicates", "errors_changed", "unchanged", "skipped")
    }
    changed = 0 if out["dry_run"] else counts["facts"] + counts["duplicates"] + counts["errors_changed"]
    days = [str(day) for day in out["days"]] if changed else []
    context.log.info(f"replay run {out['run_id']}: changed {changed} of {counts['selected']} rows, days {days}")
    elapsed = float(out["elapsed_seconds"])
    metadata: dict[str, Any] = {
        **counts,
        "replay_run_id": out["run_id"],
        "dry_run": out["dry_run"],
        "by_reason": dg.MetadataValue.json(out["by_reason"]),
        "days": dg.MetadataValue.json(days),
        "rows_per_second": round(counts["selected"] / elapsed, 1) if elapsed else 0.0,
    }
    return dg.Output(days, metadata=metadata)


@dg.op(out={})
def rebuild_after_replay(
    context: dg.OpExecutionContext, dbt: DbtCliResource, postgres: PostgresResource, days: list[str]
):
    """`dbt build` of the models downstream of what the replay wrote, with the days it touched as
    `reprocess_days`, when it changed anything."""
    if not days:
        context.log.info("the replay changed nothing: no rebuild")
        return
    dbt_vars = hourly_dbt_vars(days)
    args = ["build", *EXCLUDE_UNIT_TESTS, "--select", " ".join(REPLAYED_MODELS), "--vars", json.dumps(dbt_vars)]
    manifest = json.loads(dbt_project.manifest_path.read_text())
    with dbt_test_window(incremental_test_window(postgres, manifest, days)):
        invocation = dbt.cli(
            args, manifest=dbt_project.manifest_path, dagster_dbt_translator=translator, context=context
        )
    yield from invocation.stream()
    prune_invocation_folders(invocation.target_path.parent)


@dg.job(description="Replay ledger rows whose current outcome is an error, then rebuild the marts they feed.")
def ledger_replay_job() -> None:
    rebuild_after_replay(replay_ledger())
