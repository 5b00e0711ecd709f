from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import dagster as dg
from dagster_dbt import DbtCliResource, dbt_assets, get_asset_key_for_model
from dagster_dbt.asset_utils import get_manifest_and_translator_from_dbt_assets
from psycopg import sql

from orchestration.defs.dbt import assets as dbt_defs
from orchestration.defs.dbt.project import dbt_project
from orchestration.defs.rollups.partitions import ingest_day_partitions
from orchestration.lib.dbt.args import check_tests, dbt_build_args, rollup_vars
from orchestration.lib.dbt.manifest import relation
from orchestration.lib.postgres import PostgresResource


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=dbt_defs.translator,
    select=dbt_defs.INCREMENTAL_SELECTOR,
    partitions_def=ingest_day_partitions,
    # A backfill of many days is one dbt run from the first day's start, not one run per day.
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=dbt_defs.DBT_POOL,
)
def dbt_rollup_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, config: dbt_defs.DbtConfig):
    """The incremental hourly rollup (fct_readings_hourly), partitioned by the UTC day facts were ingested."""
    dbt_vars = rollup_vars(context.partition_time_window, datetime.now(UTC))
    args = dbt_build_args(tests=check_tests(context), full_refresh=config.full_refresh, dbt_vars=dbt_vars)
    yield from dbt.cli(args, context=context).stream().fetch_row_counts()


KEY_FIGURES_MODEL = "fct_rollout_key_figures"
KEY_FIGURES_SQL = sql.SQL("select * from {}").format(
    relation(get_manifest_and_translator_from_dbt_assets([dbt_defs.dbt_analytics_models])[0], KEY_FIGURES_MODEL)
)


@dg.asset(
    deps=[get_asset_key_for_model([dbt_defs.dbt_analytics_models], KEY_FIGURES_MODEL)],
    group_name="marts",
    owners=["team:data"],
    kinds={"python", "postgres"},
)
def rollout_key_figures(postgres: PostgresResource) -> dg.MaterializeResult:
    """The firmware rollout at a glance: the one row of the fct_rollout_key_figures mart.

    Stores nothing: it records the mart's figures as numeric metadata (share of devices and readings
    on the new mm format, devices by state, ingest error rates, left/right side switches), so the
    asset's metadata history shows them over runs. dbt computes them all from one watermark
    (`data_as_of`), so figures shown side by side agree with each other.
    """
    return dg.MaterializeResult(metadata=_as_metadata(postgres.fetch_one(KEY_FIGURES_SQL)))


def _as_metadata(row: Mapping[str, Any]) -> dict[str, dg.MetadataValue]:
    """Numbers as numeric metadata (plotted over runs), anything else as text."""
    metadata: dict[str, dg.MetadataValue] = {}
    for column, value in row.items():
        if value is None:
            metadata[column] = dg.MetadataValue.text("")
        elif isinstance(value, date | datetime):
            metadata[column] = dg.MetadataValue.text(value.isoformat())
        elif isinstance(value, bool):
            metadata[column] = dg.MetadataValue.text(str(value))
        elif isinstance(value, int):
            metadata[column] = dg.MetadataValue.int(value)
        elif isinstance(value, float | Decimal):
            metadata[column] = dg.MetadataValue.float(float(value))
        else:
            metadata[column] = dg.MetadataValue.text(str(value))
    return metadata
