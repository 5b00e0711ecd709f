"""What the Python assets and checks read from the dbt manifest instead of writing it again."""

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from psycopg import sql


def relation(manifest: Mapping[str, Any], model: str) -> sql.Identifier:
    """The relation dbt builds `model` into: schema and alias from the manifest (the database is the
    connection's, since a manifest names the database it was parsed against)."""
    return sql.Identifier(*relation_name(manifest, model))


def relation_name(manifest: Mapping[str, Any], model: str) -> tuple[str, str]:
    """(schema, alias) of the relation dbt builds `model` into."""
    for node in manifest["nodes"].values():
        if node["resource_type"] in ("model", "seed", "snapshot") and node["name"] == model:
            return node["schema"], node["alias"]
    raise KeyError(f"no dbt model {model!r} in the manifest")


def sources_with_freshness(manifest: Mapping[str, Any]) -> list[str]:
    """Unique ids of the sources with a `freshness` threshold (what `dbt source freshness` checks)."""

    def configured(freshness: Mapping[str, Any] | None) -> bool:
        freshness = freshness or {}
        return any((freshness.get(level) or {}).get("count") for level in ("warn_after", "error_after"))

    return sorted(uid for uid, source in manifest["sources"].items() if configured(source.get("freshness")))


SECONDS_PER_PERIOD = {"minute": 60, "hour": 3600, "day": 86400}


def freshness_status(
    freshness: Mapping[str, Any], max_loaded_at: datetime | None, snapshotted_at: datetime
) -> tuple[str, float]:
    """dbt's verdict on a source's freshness: `error` past error_after (or no rows at all), `warn`
    past warn_after, else `pass`; and the age in seconds."""
    if max_loaded_at is None:
        return "error", float("inf")
    age = (snapshotted_at - max_loaded_at).total_seconds()
    for level, status in (("error_after", "error"), ("warn_after", "warn")):
        criterion = freshness.get(level) or {}
        if criterion.get("count") and age > criterion["count"] * SECONDS_PER_PERIOD[criterion["period"]]:
            return status, age
    return "pass", age
