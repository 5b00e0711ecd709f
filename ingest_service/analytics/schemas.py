"""Response models of the analytics routes (a typed row model per served model, from the catalog)."""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from types import GenericAlias
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from ingest_service.analytics.catalog import Metric


class Page(BaseModel):
    limit: int = Field(description="Rows asked for (at most the route's maximum)")
    offset: int = Field(description="Rows skipped")
    returned: int = Field(description="Rows in this page")
    next_offset: int | None = Field(description="Offset of the next page; null on the last page")


class MetricPageBase(BaseModel):
    metric: str = Field(description="dbt model name")
    relation: str = Field(description="Where dbt built it (schema.relation)")
    description: str
    page: Page
    rows: list[Any]


@lru_cache(maxsize=256)
def row_model(metric: Metric) -> type[BaseModel]:
    fields: dict[str, Any] = {c.name: (c.py_type | None, None) for c in metric.columns}
    return create_model(f"{_camel(metric.name)}Row", **fields)


@lru_cache(maxsize=256)
def page_model(metric: Metric) -> type[MetricPageBase]:
    rows: Any = GenericAlias(list, row_model(metric))  # list[<row model>], a class made at run time
    return create_model(f"{_camel(metric.name)}Page", __base__=MetricPageBase, rows=(rows, ...))


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


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


class AnalyticsStatus(BaseModel):
    built: bool = Field(description="True once dbt has built the analytics models on this database")
    built_at: datetime | None = Field(
        description="When the dbt build that last built the models began: their data is as of then"
    )
    first_build_at: datetime | None = Field(description="Before the first build: when it is due, if known")
    detail: str
    models: list[str] = Field(description="The dbt models served under /analytics/<model>")
    not_served: dict[str, str] = Field(description="dbt models whose meta.analytics block is wrong, and why")


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
        description="analytics_not_built, not_permitted, schema_mismatch, query_timeout, database_unavailable, "
        "analytics_not_configured, unauthorized, unknown_example, unknown_metric"
    )
    detail: str
    first_build_at: datetime | None = Field(None, description="analytics_not_built: when the first build is due")


class ParameterProblem(BaseModel):
    parameter: str | None = Field(description="The query parameter (null: the parameters together)")
    problem: str
    type: str = Field(description="pydantic's error type, e.g. greater_than_equal, extra_forbidden")


class AnalyticsValidationError(BaseModel):
    status: Literal["error"] = "error"
    reason: Literal["invalid_parameter"] = "invalid_parameter"
    detail: str
    errors: list[ParameterProblem]
