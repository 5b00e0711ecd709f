"""What the Python assets and checks read from the dbt manifest instead of writing it again."""

from collections.abc import Mapping
from typing import Any

from psycopg import sql


def relation(manifest: Mapping[str, Any], model: str) -> sql.Identifier:
    """The relation dbt builds `model` into: schema and alias from the manifest (the database is the
    connection's, since a manifest names the database it was parsed against)."""
    for node in manifest["nodes"].values():
        if node["resource_type"] in ("model", "seed", "snapshot") and node["name"] == model:
            return sql.Identifier(node["schema"], node["alias"])
    raise KeyError(f"no dbt model {model!r} in the manifest")


def sources_with_freshness(manifest: Mapping[str, Any]) -> list[str]:
    """Unique ids of the sources with a `freshness` threshold (what `dbt source freshness` checks)."""

    def configured(freshness: Mapping[str, Any] | None) -> bool:
        freshness = freshness or {}
        return any((freshness.get(level) or {}).get("count") for level in ("warn_after", "error_after"))

    return sorted(uid for uid, source in manifest["sources"].items() if configured(source.get("freshness")))
