import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, dbt_assets
from dagster_dbt.asset_utils import get_manifest_and_translator_from_dbt_assets

from orchestration.defs.dbt.project import dbt_project
from orchestration.lib.dbt.args import check_tests, dbt_build_args, dbt_timings, hourly_dbt_vars, hourly_test_window
from orchestration.lib.dbt.cli import prune_invocation_folders
from orchestration.lib.dbt.manifest import relation_name
from orchestration.lib.dbt.translator import IotDbtTranslator
from orchestration.lib.postgres import PostgresResource

# The incremental rollup: its newest last_ingested_at before a build opens the hourly run's test window.
ROLLUP_MODEL = "fct_readings_hourly"
TEST_SINCE_ENV = "DBT_TEST_SINCE"

# Every dbt step shares one pool: two `dbt build`s rebuilding the same tables (the hourly and the
# daily job) would trip over each other.
DBT_POOL = "dbt"

translator = IotDbtTranslator()


class DbtConfig(dg.Config):
    """How a run builds: the hourly job's defaults (incremental, tests over the changed window), or
    the daily job's (`full_refresh`: every table rebuilt and every test over all history)."""

    full_refresh: bool = False
    # UTC days ('YYYY-MM-DD') the incremental marts rebuild whole (the dbt var `reprocess_days`):
    # the days a ledger replay touched. Their tests read from the oldest of them.
    reprocess_days: list[str] = []


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=translator,
    pool=DBT_POOL,
)
def dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, postgres: PostgresResource, config: DbtConfig):
    """The whole dbt project in one `dbt build`: seeds, staging and intermediate views, the marts
    (incremental over the changed days) and every selected dbt test, each reported as its check.

    One invocation: dbt itself skips what sits downstream of a failing test, so the blocking ledger
    check still stops the marts. Hourly (the default), the tests read only the window since the
    rollup's watermark before this build (minus its lookback); with `full_refresh` they read all."""
    since = ""
    if not config.full_refresh:
        manifest = get_manifest_and_translator_from_dbt_assets([context.assets_def])[0]
        since = incremental_test_window(postgres, manifest, config.reprocess_days)
    dbt_vars = hourly_dbt_vars(config.reprocess_days)
    args = dbt_build_args(tests=check_tests(context), full_refresh=config.full_refresh, dbt_vars=dbt_vars)
    started = time.perf_counter()
    with dbt_test_window(since):  # dbt starts inside cli()
        invocation = dbt.cli(args, context=context)
    events = invocation.stream()
    # Row counts cost a count(*) per table, which follows history: the daily run only.
    yield from (events.fetch_row_counts() if config.full_refresh else events)
    timings = dbt_timings(invocation.get_artifact("run_results.json"), time.perf_counter() - started)
    context.log.info(f"dbt timings: {json.dumps(timings)}")
    prune_invocation_folders(invocation.target_path.parent)


def incremental_test_window(
    postgres: PostgresResource, manifest: Mapping[str, Any], reprocess_days: Sequence[str]
) -> str:
    """DBT_TEST_SINCE of an incremental build (this asset's, the ledger replay job's): the rollup's
    watermark before the build, or the oldest of `reprocess_days` when earlier."""
    watermark = postgres.max_of(relation_name(manifest, ROLLUP_MODEL), "last_ingested_at")
    return hourly_test_window(watermark, reprocess_days)


@contextmanager
def dbt_test_window(since: str) -> Iterator[None]:
    """DBT_TEST_SINCE set while dbt starts. The window goes in the environment, not in --vars: a var
    that changes every hour would make dbt re-parse the whole project every hour
    (macros/test_window.sql)."""
    os.environ[TEST_SINCE_ENV] = since
    try:
        yield
    finally:
        del os.environ[TEST_SINCE_ENV]
