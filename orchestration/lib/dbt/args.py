"""Pure helpers that turn run context into dbt CLI arguments (unit-tested in tests/orchestration)."""

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import dagster as dg

# Unit tests need fixed inputs, not the warehouse: CI runs them with `dbt test --select test_type:unit`.
# Inside Dagster's build they would not map to checks anyway (dagster-io/dagster#34080).
EXCLUDE_UNIT_TESTS = ["--exclude-resource-type", "unit_test"]
# dbt's default (eager) pulls in every test touching a selected model, so the staging step would run
# the marts' relationship tests before the marts exist. `buildable` runs a test in the step that
# builds the last of its parents: singular tests spanning sources and a mart run with that mart.
INDIRECT_SELECTION = ["--indirect-selection", "buildable"]


def dbt_build_args(*, full_refresh: bool = False, dbt_vars: Mapping[str, Any] | None = None) -> list[str]:
    """`dbt build` with the project's fixed flags, plus --full-refresh and --vars when asked."""
    args = ["build", *EXCLUDE_UNIT_TESTS, *INDIRECT_SELECTION]
    if full_refresh:
        args.append("--full-refresh")
    if dbt_vars:
        args += ["--vars", json.dumps(dict(dbt_vars), sort_keys=True)]
    return args


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
