"""Turn run context into dbt CLI arguments (the pure part unit-tested in tests/orchestration)."""

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
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


def rollup_vars(window: dg.TimeWindow, now: datetime) -> dict[str, str]:
    """dbt vars for one run of the hourly rollup over a window of ingest days.

    fct_readings_hourly re-aggregates every (device, type, hour) group that has facts ingested after
    `rollup_since` (and up to `rollup_until`); unset, after its own watermark. A window still open
    (today) is an ordinary incremental run, whose cost is the new data. A closed window (a backfill
    of past days) re-rolls the groups its days' facts touch, whole, so it costs what those days cost.
    """
    if window.end > now:
        return {}
    return {"rollup_since": window.start.isoformat(), "rollup_until": window.end.isoformat()}
