import dagster as dg
from dagster_dbt import DbtCliResource, dbt_assets

from orchestration.defs.dbt.project import dbt_project
from orchestration.lib.dbt.args import check_tests, dbt_build_args
from orchestration.lib.dbt.translator import IotDbtTranslator

# Three slices, so that a blocking check on the staging layer (the ledger accounting) stops the
# marts of the same run (blocking only gates other steps) and the incremental rollup can be
# partitioned on its own. Each step runs the dbt tests of its own checks (lib/dbt/args.py).
STAGING_SELECTOR = "path:models/staging resource_type:seed"
ANALYTICS_SELECTOR = "path:models/intermediate path:models/marts"
INCREMENTAL_SELECTOR = "config.materialized:incremental"
# All dbt steps share one pool: two `dbt build`s rebuilding the same tables would trip over each other.
DBT_POOL = "dbt"

translator = IotDbtTranslator()


class DbtConfig(dg.Config):
    full_refresh: bool = False


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=translator,
    select=STAGING_SELECTOR,
    pool=DBT_POOL,
)
def dbt_staging_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, config: DbtConfig):
    """Seeds and the staging views over the ingest tables, with the ingest tables' source tests."""
    args = dbt_build_args(tests=check_tests(context), full_refresh=config.full_refresh)
    yield from dbt.cli(args, context=context).stream().fetch_row_counts()


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=translator,
    select=ANALYTICS_SELECTOR,
    exclude=INCREMENTAL_SELECTOR,
    pool=DBT_POOL,
)
def dbt_analytics_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, config: DbtConfig):
    """The intermediate views and the marts (metrics, ingest_parse, v_platform_extension_mm)."""
    args = dbt_build_args(tests=check_tests(context), full_refresh=config.full_refresh)
    yield from dbt.cli(args, context=context).stream().fetch_row_counts()
