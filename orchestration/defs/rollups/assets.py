from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import dagster as dg
from dagster_dbt import get_asset_key_for_model
from dagster_dbt.asset_utils import get_manifest_and_translator_from_dbt_assets
from psycopg import sql

from orchestration.defs.dbt import assets as dbt_defs
from orchestration.lib.dbt.manifest import relation
from orchestration.lib.postgres import PostgresResource

KEY_FIGURES_MODEL = "fct_rollout_key_figures"
KEY_FIGURES_SQL = sql.SQL("select * from {}").format(
    relation(get_manifest_and_translator_from_dbt_assets([dbt_defs.dbt_models])[0], KEY_FIGURES_MODEL)
)


@dg.asset(
    deps=[get_asset_key_for_model([dbt_defs.dbt_models], KEY_FIGURES_MODEL)],
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
