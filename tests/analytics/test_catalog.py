"""The analytics catalog matches the dbt project: every mart has a route with the model's columns."""

from __future__ import annotations

from pathlib import Path

import yaml

from ingest_service.analytics.catalog import EXAMPLES, METRICS, METRICS_BY_NAME, PY_TYPES
from ingest_service.core.config import PROJECT_ROOT

MARTS = PROJECT_ROOT / "dbt_project" / "models" / "marts"


def dbt_models() -> dict[str, list[tuple[str, str]]]:
    models = {}
    for path in sorted(Path(MARTS).glob("*.yml")):
        for model in yaml.safe_load(path.read_text())["models"]:
            models[model["name"]] = [(c["name"], c.get("data_type")) for c in model.get("columns", [])]
    return models


def test_every_mart_has_a_route_with_the_models_columns() -> None:
    models = dbt_models()
    assert set(METRICS_BY_NAME) == set(models)
    for metric in METRICS:
        assert list(metric.columns) == models[metric.name], metric.name
        assert all(dtype in PY_TYPES for _, dtype in metric.columns)
        assert set(metric.key) | set(metric.filters) <= set(metric.column_names)
        assert metric.time_column is None or metric.time_column in metric.column_names


def test_examples_read_only_catalogued_models() -> None:
    for example in EXAMPLES:
        assert example.reads and all(name in METRICS_BY_NAME for name in example.reads)
        assert all(f"from {name}" in example.sql for name in example.reads)
        assert ";" not in example.sql
