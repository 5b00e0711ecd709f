"""What the analytics routes serve, generated from the dbt manifest.

A dbt model is served as `GET /analytics/<name>` when its YAML says how (docs/analytics.md):

    config:
      meta:
        analytics:
          key: [device_id]            # required: the stable order (after the time column)
          time_column: observed_at    # optional: `from`/`to` filter it, rows are ordered by it first
          default_order: desc         # optional (asc)
          filters: [source_type]      # optional: columns filterable by exact value
          title: ...                  # optional (the model's name)
          description: ...            # optional (the model's dbt description)

The columns (in the YAML's order) and their types come from the model's `columns` and their
`data_type`, the relation from the manifest's schema and alias: no Python file names a mart's
columns or its schema. A model whose block cannot be served is left out, with the reason logged and
listed by `GET /analytics/status`. `ManifestCatalog` re-reads the manifest when dbt rewrites it, so a
new mart is served after `dbt build` without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

# dbt data_type (normalised) -> Python type of the JSON value.
PY_TYPES: dict[str, type] = {
    "smallint": int,
    "integer": int,
    "bigint": int,
    "real": float,
    "double precision": float,
    "numeric": float,
    "text": str,
    "boolean": bool,
    "date": date,
    "timestamp with time zone": datetime,
}
# PostgreSQL's other spellings of the same types.
TYPE_ALIASES = {
    "int2": "smallint",
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "float4": "real",
    "float8": "double precision",
    "float": "double precision",
    "decimal": "numeric",
    "varchar": "text",
    "character varying": "text",
    "bool": "boolean",
    "timestamptz": "timestamp with time zone",
}
TIME_TYPES = {"date", "timestamp with time zone"}

# Path segments the analytics router uses itself, and the query parameters every model route has:
# a model or a filter by one of these names would be shadowed.
RESERVED_NAMES = frozenset({"examples", "rollout", "status"})
ROUTE_PARAMETERS = frozenset({"limit", "offset", "device_id", "from", "to", "order"})
DEVICE_COLUMN = "device_id"  # a model with this column is filterable by device
NAME = re.compile(r"[a-z][a-z0-9_]*")


def normalize_type(data_type: str) -> str:
    """`numeric(10,2)` -> `numeric`, `TIMESTAMPTZ` -> `timestamp with time zone`."""
    words = " ".join(re.sub(r"\(.*?\)", " ", data_type.lower()).split())
    return TYPE_ALIASES.get(words, words)


@dataclass(frozen=True)
class Column:
    name: str
    data_type: str  # normalised, a key of PY_TYPES

    @property
    def py_type(self) -> type:
        return PY_TYPES[self.data_type]


@dataclass(frozen=True)
class Metric:
    """One dbt model served as `GET /analytics/<name>`."""

    name: str
    title: str
    description: str
    schema: str
    identifier: str
    columns: tuple[Column, ...]  # in the model's order
    key: tuple[str, ...]
    time_column: str | None
    default_order: Literal["asc", "desc"]
    filters: tuple[str, ...]

    @property
    def relation(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.identifier)

    @property
    def relation_name(self) -> str:
        return f"{self.schema}.{self.identifier}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def has_device(self) -> bool:
        return DEVICE_COLUMN in self.column_names

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


class AnalyticsMeta(BaseModel):
    """The `config.meta.analytics` block of a model's YAML."""

    model_config = ConfigDict(extra="forbid")

    key: list[str] = Field(min_length=1)
    time_column: str | None = None
    default_order: Literal["asc", "desc"] = "asc"
    filters: list[str] = []
    title: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Catalog:
    metrics: Mapping[str, Metric]  # served models by name, in name order
    relations: Mapping[str, sql.Identifier]  # every model of the manifest (the examples read them)
    problems: Mapping[str, str]  # models with a meta.analytics block that are not served, and why
    generated_at: str | None  # when dbt wrote the manifest

    def relation(self, model: str) -> sql.Identifier:
        return self.relations[model]


def catalog_from_manifest(manifest: Mapping[str, Any]) -> Catalog:
    metrics: dict[str, Metric] = {}
    relations: dict[str, sql.Identifier] = {}
    problems: dict[str, str] = {}
    for node in manifest.get("nodes", {}).values():
        if node.get("resource_type") != "model":
            continue
        relations[node["name"]] = sql.Identifier(node["schema"], node["alias"])
        block = (node.get("config") or {}).get("meta", {}).get("analytics")
        if block is None:
            continue
        try:
            metric = _metric(node, block)
        except (ValueError, ValidationError) as exc:
            problems[node["name"]] = _problem(exc)
            log.warning("analytics: dbt model %s is not served: %s", node["name"], problems[node["name"]])
            continue
        metrics[metric.name] = metric
    return Catalog(
        metrics={name: metrics[name] for name in sorted(metrics)},
        relations=relations,
        problems=problems,
        generated_at=manifest.get("metadata", {}).get("generated_at"),
    )


def load_catalog(path: Path) -> Catalog:
    with open(path, "rb") as file:
        return catalog_from_manifest(json.load(file))


def _metric(node: Mapping[str, Any], block: Any) -> Metric:
    meta = AnalyticsMeta.model_validate(block)
    name = node["name"]
    if not NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ValueError(f"the name {name!r} cannot be a route (reserved: {', '.join(sorted(RESERVED_NAMES))})")
    columns = []
    for column in node.get("columns", {}).values():
        if not NAME.fullmatch(column["name"]) or column["name"].startswith("model_"):
            raise ValueError(f"column {column['name']!r}: name must be lowercase letters, digits and _")
        data_type = normalize_type(column.get("data_type") or "")
        if data_type not in PY_TYPES:
            raise ValueError(
                f"column {column['name']!r}: data_type {column.get('data_type')!r} is not one of "
                f"{', '.join(PY_TYPES)} (set `data_type` on every column)"
            )
        columns.append(Column(column["name"], data_type))
    if not columns:
        raise ValueError("the model's YAML lists no columns")
    names = {c.name for c in columns}
    unknown = [c for c in (*meta.key, *meta.filters, meta.time_column) if c is not None and c not in names]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not a column of the model")
    types = {c.name: c.data_type for c in columns}
    if meta.time_column is not None and types[meta.time_column] not in TIME_TYPES:
        raise ValueError(f"time_column {meta.time_column} must be a date or timestamp with time zone")
    filters = tuple(f for f in dict.fromkeys(meta.filters) if f != DEVICE_COLUMN)  # device_id: always
    clashing = [f for f in filters if f in ROUTE_PARAMETERS]
    if clashing:
        raise ValueError(f"filter {', '.join(clashing)} would shadow a route parameter")
    return Metric(
        name=name,
        title=meta.title or name,
        description=" ".join((meta.description or node.get("description") or "").split()),
        schema=node["schema"],
        identifier=node["alias"],
        columns=tuple(columns),
        key=tuple(meta.key),
        time_column=meta.time_column,
        default_order=meta.default_order,
        filters=filters,
    )


def _problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"meta.analytics.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


class ManifestCatalog:
    """The catalog of the manifest at `path`, re-read whenever dbt rewrites the file.

    No manifest yet (dbt has never parsed or built on this host): `catalog` is None and the analytics
    routes answer 503 `analytics_not_built`. A manifest being written (invalid JSON) is skipped until
    it changes again; a manifest that disappears (`dbt clean`) leaves the last catalog in place.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.catalog: Catalog | None = None
        self._seen: tuple[int, int, int] | None = None

    def refresh(self) -> bool:
        """Re-read the manifest if it changed since the last look; True when the catalog changed."""
        try:
            stat = self.path.stat()
        except OSError:
            return False
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            catalog = load_catalog(self.path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("analytics: dbt manifest %s unreadable (%s); read again when it changes", self.path, exc)
            return False
        self.catalog = catalog
        log.info("analytics: %d dbt models served from %s", len(catalog.metrics), self.path)
        return True

    async def watch(self, on_change: Callable[[Catalog], None], interval: float = 1.0) -> None:
        """Look at the manifest every `interval` seconds (off the event loop: it is ~1 MB of JSON)."""
        while True:
            await asyncio.sleep(interval)
            if await asyncio.to_thread(self.refresh) and self.catalog is not None:
                on_change(self.catalog)
