"""Response models of the analytics routes (one typed row model per metric, built from the catalog)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from ingest_service.analytics.catalog import METRICS, PY_TYPES, Metric


class Page(BaseModel):
    limit: int = Field(description="Rows asked for (at most the route's maximum)")
    offset: int = Field(description="Rows skipped")
    returned: int = Field(description="Rows in this page")
    next_offset: int | None = Field(description="Offset of the next page; null on the last page")


class MetricPageBase(BaseModel):
    metric: str = Field(description="dbt model name (relation in the analytics schema)")
    relation: str
    description: str
    page: Page
    rows: list[Any]


def _row_model(metric: Metric) -> type[BaseModel]:
    fields: dict[str, Any] = {name: (PY_TYPES[dtype] | None, None) for name, dtype in metric.columns}
    return create_model(f"{_camel(metric.name)}Row", **fields)


def _page_model(metric: Metric, row: type[BaseModel]) -> type[MetricPageBase]:
    return create_model(f"{_camel(metric.name)}Page", __base__=MetricPageBase, rows=(list[row], ...))


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


ROW_MODELS: dict[str, type[BaseModel]] = {m.name: _row_model(m) for m in METRICS}
PAGE_MODELS: dict[str, type[MetricPageBase]] = {m.name: _page_model(m, ROW_MODELS[m.name]) for m in METRICS}


class MetricInfo(BaseModel):
    name: str
    title: str
    description: str
    path: str
    columns: list[str]
    time_column: str | None
    device_filter: bool
    filters: list[str]


class AnalyticsIndex(BaseModel):
    metrics: list[MetricInfo]
    examples_path: str
    max_limit: int


class ExampleSummary(BaseModel):
    name: str
    title: str
    description: str
    sql: str
    path: str


class ExampleList(BaseModel):
    examples: list[ExampleSummary]


class ExampleResult(ExampleSummary):
    columns: list[str]
    rows: list[dict[str, Any]]
    row_count: int
    truncated: bool = Field(description="True when the query answered more rows than the route returns")


class RolloutPoint(BaseModel):
    bucket_start: datetime | date
    payload_format: Literal["legacy", "new"] | str
    devices: int
    readings: int
    total_devices: int
    total_readings: int
    device_share: float
    reading_share: float


class RolloutSeries(BaseModel):
    granularity: Literal["hour", "day"]
    source: str
    points: list[RolloutPoint]


class AnalyticsError(BaseModel):
    status: Literal["error"] = "error"
    reason: str = Field(
        description="not_built, not_permitted, schema_mismatch, query_timeout, database_unavailable, "
        "analytics_not_configured, unauthorized, unknown_example"
    )
    detail: str
