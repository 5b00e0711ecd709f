"""The analytics catalog is the dbt manifest's: every model with `meta.analytics` is served with the
YAML's columns and types; a wrong block is reported, not served; the manifest is followed as it changes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest_service.analytics.catalog import (
    PY_TYPES,
    RESERVED_NAMES,
    ManifestCatalog,
    catalog_from_manifest,
    normalize_type,
)
from ingest_service.analytics.examples import EXAMPLES
from ingest_service.api.routes.analytics import router
from tests.analytics.conftest import DBT_PROJECT, AnalyticsDb, served_models


def yaml_models() -> dict[str, dict[str, Any]]:
    models = {}
    for path in sorted((DBT_PROJECT / "models").rglob("*.yml")):
        for model in yaml.safe_load(path.read_text()).get("models", []):
            models[model["name"]] = model
    return models


def test_every_mart_with_meta_analytics_is_served_with_its_yaml_columns(analytics_db: AnalyticsDb) -> None:
    catalog = analytics_db.catalog
    assert catalog.problems == {}
    assert list(catalog.metrics) == served_models()
    models = yaml_models()
    for name, metric in catalog.metrics.items():
        columns = [(c["name"], normalize_type(c["data_type"])) for c in models[name]["columns"]]
        assert [(c.name, c.data_type) for c in metric.columns] == columns, name
        meta = models[name]["config"]["meta"]["analytics"]
        assert list(metric.key) == meta["key"] and metric.time_column == meta.get("time_column")
        assert metric.title == meta.get("title", name)
        assert metric.relation_name == f"{metric.schema}.{name}" and metric.schema  # from the manifest


def test_examples_read_only_served_models() -> None:
    served = set(served_models())
    for example in EXAMPLES:
        assert example.reads and set(example.reads) <= served, example.name
        assert all(f"from {name}" in example.sql for name in example.reads)
        assert "{" not in example.sql and ";" not in example.sql


def test_reserved_names_are_the_routers_own_paths() -> None:
    """A model named like a fixed analytics route would be shadowed: those names are refused."""
    segments = {route.path.removeprefix("/analytics/").split("/")[0] for route in router.routes}
    assert segments - {""} == RESERVED_NAMES


# --- the catalog from a manifest, unit by unit --------------------------------------------------


def manifest(**analytics: Any) -> dict[str, Any]:
    """A manifest of one model `m` (columns a: bigint, t: timestamptz, s: text) with this meta.analytics."""
    columns = {
        "a": {"name": "a", "data_type": "bigint"},
        "t": {"name": "t", "data_type": "timestamptz"},
        "s": {"name": "s", "data_type": "varchar(20)"},
    }
    node = {
        "resource_type": "model",
        "name": "m",
        "schema": "some_schema",
        "alias": "m_table",
        "description": "  The model's\n description. ",
        "columns": columns,
        "config": {"meta": {"analytics": analytics}},
    }
    return {"metadata": {"generated_at": "2026-01-01T00:00:00Z"}, "nodes": {"model.p.m": node}}


def test_a_model_is_served_from_its_manifest_entry() -> None:
    catalog = catalog_from_manifest(manifest(key=["a"], time_column="t", filters=["s", "s"], default_order="desc"))
    metric = catalog.metrics["m"]
    assert (metric.title, metric.description) == ("m", "The model's description.")
    assert [(c.name, c.data_type) for c in metric.columns] == [
        ("a", "bigint"),
        ("t", "timestamp with time zone"),
        ("s", "text"),
    ]
    assert (metric.key, metric.time_column, metric.filters, metric.default_order) == (("a",), "t", ("s",), "desc")
    assert metric.relation_name == "some_schema.m_table" and catalog.relation("m") == metric.relation
    assert catalog.generated_at == "2026-01-01T00:00:00Z"


def test_a_model_without_the_block_is_not_served_but_can_be_read() -> None:
    plain = manifest(key=["a"])
    del plain["nodes"]["model.p.m"]["config"]["meta"]["analytics"]
    catalog = catalog_from_manifest(plain)
    assert catalog.metrics == {} and catalog.problems == {} and "m" in catalog.relations


@pytest.mark.parametrize(
    ("block", "change", "problem"),
    [
        ({}, None, "meta.analytics.key: Field required"),
        ({"key": []}, None, "meta.analytics.key"),
        ({"key": ["nope"]}, None, "nope: not a column"),
        ({"key": ["a"], "filters": ["zzz"]}, None, "zzz: not a column"),
        ({"key": ["a"], "time_column": "s"}, None, "must be a date or timestamp"),
        ({"key": ["a"], "filters": ["limit"]}, ("columns", "limit"), "shadow a route parameter"),
        ({"key": ["a"], "colour": "red"}, None, "meta.analytics.colour: Extra inputs are not permitted"),
        ({"key": ["a"], "default_order": "up"}, None, "meta.analytics.default_order"),
        ({"key": ["a"]}, ("data_type", None), "data_type None is not one of"),
        ({"key": ["a"]}, ("data_type", "uuid"), "data_type 'uuid' is not one of"),
        ({"key": ["a"]}, ("name", "status"), "cannot be a route"),
        ({"key": ["a"]}, ("name", "Bad-Name"), "cannot be a route"),
    ],
)
def test_a_wrong_block_is_reported_and_not_served(block: dict, change: tuple | None, problem: str) -> None:
    data = manifest(**block)
    node = data["nodes"]["model.p.m"]
    if change == ("columns", "limit"):
        node["columns"]["limit"] = {"name": "limit", "data_type": "text"}
        node["config"]["meta"]["analytics"]["filters"] = ["limit"]
    elif change and change[0] == "data_type":
        node["columns"]["s"]["data_type"] = change[1]
    elif change and change[0] == "name":
        node["name"] = change[1]
    catalog = catalog_from_manifest(data)
    assert catalog.metrics == {}
    assert problem in catalog.problems[node["name"]], catalog.problems


def test_every_type_spelling_maps_to_a_json_type() -> None:
    for spelling in ("INT8", "int", "numeric(10, 2)", "character varying(30)", "timestamptz", "bool", "float8"):
        assert normalize_type(spelling) in PY_TYPES, spelling


def test_the_catalog_follows_the_manifest_file(tmp_path: Path) -> None:
    path = tmp_path / "target" / "manifest.json"
    source = ManifestCatalog(path)
    assert not source.refresh() and source.catalog is None  # no manifest yet

    path.parent.mkdir()
    first = manifest(key=["a"])
    text = json.dumps(first)
    path.write_text(text[: len(text) // 2])  # dbt is half-way through writing it
    assert not source.refresh() and source.catalog is None

    path.write_text(text)
    assert source.refresh() and source.catalog is not None and list(source.catalog.metrics) == ["m"]
    assert not source.refresh()  # unchanged: not read again

    second = copy.deepcopy(first)
    second["nodes"]["model.p.n"] = {**second["nodes"]["model.p.m"], "name": "n", "alias": "n"}
    path.write_text(json.dumps(second))
    assert source.refresh() and list(source.catalog.metrics) == ["m", "n"]

    path.unlink()  # `dbt clean`: the last catalog stays
    assert not source.refresh() and list(source.catalog.metrics) == ["m", "n"]
