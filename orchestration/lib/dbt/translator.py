"""How dbt resources look in Dagster: groups from the dbt folder, owners, kinds and descriptions."""

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtProject

# dbt folder (the first path segment under models/, or the resource type) -> Dagster group.
GROUP_BY_FOLDER = {"staging": "staging", "intermediate": "intermediate", "marts": "marts"}
SOURCE_GROUP = "ingest"
SEED_GROUP = "staging"

# Who answers for what: the API team owns the tables it writes, the data team the models.
INGEST_OWNER = "team:ingest"
ANALYTICS_OWNER = "team:data"

# The hourly schedule rebuilds the marts; two missed runs in a row turn them stale in the UI.
MARTS_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=3), warn_window=timedelta(hours=2))


class IotDbtTranslator(DagsterDbtTranslator):
    """Keeps dagster-dbt's keys (`<model>`, `ingest/<table>`) and sets groups, owners, kinds, descriptions."""

    def __init__(self) -> None:
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_source_tests_as_checks=True))

    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        group_name = _group_name(props)
        return spec.replace_attributes(
            group_name=group_name,
            owners=[_owner(props)],
            description=_description(props, spec.description),
            freshness_policy=MARTS_FRESHNESS if group_name == "marts" else spec.freshness_policy,
        ).merge_attributes(kinds=_kinds(props))


def _group_name(props: Mapping[str, Any]) -> str:
    """`ingest` for the API's base tables (dbt sources), else the folder the model lives in."""
    resource_type = props["resource_type"]
    if resource_type == "source":
        return SOURCE_GROUP
    if resource_type == "seed":
        return SEED_GROUP
    # fqn = [project, folder, ..., name]
    folder = props["fqn"][1] if len(props["fqn"]) > 2 else ""
    return GROUP_BY_FOLDER.get(folder, "marts")


def _owner(props: Mapping[str, Any]) -> str:
    return INGEST_OWNER if props["resource_type"] == "source" else ANALYTICS_OWNER


def _kinds(props: Mapping[str, Any]) -> set[str]:
    """dbt and postgres everywhere, plus the materialization a reader of the graph cares about."""
    kinds = {"dbt", "postgres"}
    if props["resource_type"] == "source":
        return {"postgres", "table"}
    if props["resource_type"] == "seed":
        return kinds | {"seed"}
    materialized = props.get("config", {}).get("materialized")
    if materialized in ("view", "table", "incremental"):
        kinds.add(materialized)
    return kinds


def _description(props: Mapping[str, Any], default: str | None) -> str | None:
    """The YAML description, with where the relation lives, since analysts query it by name."""
    text = (props.get("description") or default or "").strip()
    relation = props.get("relation_name")
    if relation:
        text = f"{text}\n\nRelation: `{relation}`." if text else f"Relation: `{relation}`."
    return text or None
