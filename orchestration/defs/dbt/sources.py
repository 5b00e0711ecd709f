import dagster as dg
from dagster_dbt.asset_utils import get_manifest_and_translator_from_dbt_assets

from orchestration.defs.dbt import assets as dbt_defs
from orchestration.defs.dbt.project import dbt_project


@dg.definitions
def ingest_sources() -> dg.Definitions:
    """The API's base tables (dbt sources) as assets of their own, so they carry the `ingest` group,
    owner and descriptions instead of being anonymous upstream stubs."""
    # In a module of its own: a module with a @dg.definitions function contributes only that.
    manifest = get_manifest_and_translator_from_dbt_assets([dbt_defs.dbt_models])[0]
    specs = [dbt_defs.translator.get_asset_spec(manifest, unique_id, dbt_project) for unique_id in manifest["sources"]]
    return dg.Definitions(assets=specs)
