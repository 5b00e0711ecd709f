"""Turn run context into dbt CLI arguments (the pure part unit-tested in tests/orchestration)."""

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from typing import Any

import dagster as dg
from dagster_dbt.asset_utils import (
    get_checks_on_sources_upstream_of_selected_assets,
    get_dbt_test_names_for_check_keys,
    get_manifest_and_translator_from_dbt_assets,
)

# Unit tests need fixed inputs, not the warehouse: CI runs them with `dbt test --select test_type:unit`.
# Inside Dagster's build they would not map to checks anyway (dagster-io/dagster#34080).
EXCLUDE_UNIT_TESTS = ["--exclude-resource-type", "unit_test"]
# A step runs exactly the dbt tests behind the asset checks it executes, named one by one, and no
# others: a test then runs in the step that holds its check, after every step that builds one of
# its other parents (a check's additional deps order the steps), and every test reports as its
# check. dbt's indirect selection cannot do that across steps: `eager` runs a mart's relationship
# test in the staging step, before the mart is rebuilt; `buildable` runs it in no step at all when
# its other parent (a staging model) is neither in the step nor upstream of it.
NO_INDIRECT_SELECTION = ["--indirect-selection", "empty"]


def dbt_build_args(
    *, tests: Sequence[str] = (), full_refresh: bool = False, dbt_vars: Mapping[str, Any] | None = None
) -> list[str]:
    """`dbt build` of the step's models (dagster-dbt selects them) plus exactly `tests`, with the
    project's fixed flags, and --full-refresh and --vars when asked."""
    args = ["build", *EXCLUDE_UNIT_TESTS, *NO_INDIRECT_SELECTION]
    if tests:
        args += ["--select", " ".join(tests)]
    if full_refresh:
        args.append("--full-refresh")
    if dbt_vars:
        args += ["--vars", json.dumps(dict(dbt_vars), sort_keys=True)]
    return args


def check_tests(context: dg.AssetExecutionContext) -> list[str]:
    """The dbt tests (by FQN, as dagster-dbt selects them) behind the checks this step executes:
    the selected checks, and those on the sources upstream of the selected models, whose results
    dagster-dbt reports with them."""
    assets_def = context.assets_def
    keys = {
        *context.selected_asset_check_keys,
        *get_checks_on_sources_upstream_of_selected_assets(assets_def, context.selected_asset_keys),
    }
    manifest, translator, _ = get_manifest_and_translator_from_dbt_assets([assets_def])
    return sorted(get_dbt_test_names_for_check_keys(translator, manifest, assets_def, keys))


def hourly_dbt_vars(reprocess_days: Sequence[str]) -> dict[str, Any]:
    """dbt vars of an incremental run: the UTC days to rebuild whole, if any (validated, sorted)."""
    days = sorted({date.fromisoformat(day).isoformat() for day in reprocess_days})
    return {"reprocess_days": days} if days else {}


def hourly_test_window(watermark: datetime | None, reprocess_days: Sequence[str]) -> str:
    """DBT_TEST_SINCE of an incremental run: the rollup's watermark before the build (dbt subtracts
    the rollup's lookback, so the tests read what the build re-reads), or the start of the oldest
    of `reprocess_days` when that is earlier; empty (every test reads everything) when there is no
    rollup yet."""
    if watermark is None:
        return ""
    since = watermark
    for day in reprocess_days:
        since = min(since, datetime.combine(date.fromisoformat(day), time(), tzinfo=UTC))
    return since.isoformat()


def dbt_timings(run_results: Mapping[str, Any], wall_seconds: float) -> dict[str, Any]:
    """Where a dbt step's time went: dbt's own elapsed time, the rest (dagster-dbt set-up, dbt
    start-up and partial parse, event handling), the models' and the tests' summed execution
    times (dbt runs two threads), and the slowest nodes."""
    timed = [
        (result["unique_id"].split(".")[0], result["unique_id"].split(".")[2], float(result["execution_time"]))
        for result in run_results["results"]
    ]
    elapsed = float(run_results.get("elapsed_time") or 0.0)
    slowest = sorted(timed, key=lambda item: -item[2])[:8]
    return {
        "step_wall_s": round(wall_seconds, 2),
        "dbt_elapsed_s": round(elapsed, 2),
        "outside_dbt_s": round(wall_seconds - elapsed, 2),
        "models": sum(1 for kind, _, _ in timed if kind != "test"),
        "tests": sum(1 for kind, _, _ in timed if kind == "test"),
        "models_s": round(sum(t for kind, _, t in timed if kind != "test"), 2),
        "tests_s": round(sum(t for kind, _, t in timed if kind == "test"), 2),
        "slowest": {name: round(t, 2) for _, name, t in slowest},
    }
