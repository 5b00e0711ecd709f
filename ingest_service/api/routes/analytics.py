"""Read-only analytics: one route per dbt mart, the curated example queries and the rollout series.

Everything here reads the analytics schema through the analyst role (ingest_service.analytics.reader)
and needs `Authorization: Bearer <ANALYTICS_API_KEY>` (open in dev mode when no key is set).
"""

from __future__ import annotations

import inspect
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from ingest_service.analytics import queries
from ingest_service.analytics.catalog import EXAMPLES, EXAMPLES_BY_NAME, METRICS, Metric
from ingest_service.analytics.deps import AnalyticsAuth, ReaderDep
from ingest_service.analytics.reader import AnalyticsReader, AnalyticsUnavailable
from ingest_service.analytics.schemas import (
    PAGE_MODELS,
    AnalyticsError,
    AnalyticsIndex,
    ExampleList,
    ExampleResult,
    ExampleSummary,
    MetricInfo,
    Page,
    RolloutSeries,
)

PREFIX = "/analytics"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_OFFSET = 10_000_000
MAX_ROLLOUT_HOURS = 24 * 31
MAX_ROLLOUT_DAYS = 3 * 366

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": AnalyticsError, "description": "Missing or wrong analytics key"},
    503: {
        "model": AnalyticsError,
        "description": "The analytics schema cannot answer: not built by dbt yet, role or grants missing, "
        "timeout, database down, or no ANALYTICS_API_KEY outside dev mode",
    },
}

router = APIRouter(prefix=PREFIX, tags=["analytics"], dependencies=[AnalyticsAuth], responses=ERRORS)

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Rows per page (1..{MAX_LIMIT})")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip")]


def _path(name: str) -> str:
    return f"{PREFIX}/{name}"


@router.get("/", response_model=AnalyticsIndex, summary="List the metric routes and examples")
async def index() -> AnalyticsIndex:
    """Every metric route (a dbt model of the analytics schema) with its filters."""
    return AnalyticsIndex(
        metrics=[
            MetricInfo(
                name=m.name,
                title=m.title,
                description=m.description,
                path=_path(m.name),
                columns=list(m.column_names),
                time_column=m.time_column,
                device_filter=m.has_device,
                filters=list(m.filters),
            )
            for m in METRICS
        ],
        examples_path=_path("examples"),
        max_limit=MAX_LIMIT,
    )


@router.get("/examples", response_model=ExampleList, summary="The curated example queries")
async def list_examples() -> ExampleList:
    """The curated example queries with their title, description and SQL (run one by name)."""
    return ExampleList(examples=[_summary(e.name) for e in EXAMPLES])


@router.get(
    "/examples/{name}",
    response_model=ExampleResult,
    summary="Run one example query by name",
    responses={404: {"model": AnalyticsError, "description": "No example of that name"}},
)
async def run_example(
    name: Annotated[str, Path(description="Example name, e.g. side_switches")], reader: ReaderDep
) -> ExampleResult:
    """Runs the named example's fixed SQL (nothing from the request becomes SQL) and returns it with its rows."""
    example = EXAMPLES_BY_NAME.get(name)
    if example is None:
        known = ", ".join(EXAMPLES_BY_NAME)
        raise AnalyticsUnavailable("unknown_example", f"no example named {name[:80]!r}; known: {known}", 404)
    columns, rows, truncated = await queries.run_example(reader, example)
    return ExampleResult(
        **_summary(name).model_dump(), columns=columns, rows=rows, row_count=len(rows), truncated=truncated
    )


def _summary(name: str) -> ExampleSummary:
    e = EXAMPLES_BY_NAME[name]
    return ExampleSummary(
        name=e.name, title=e.title, description=e.description, sql=e.sql, path=_path(f"examples/{name}")
    )


@router.get("/rollout/format_share", response_model=RolloutSeries, summary="Rollout: share per format over time")
async def rollout_format_share(
    reader: ReaderDep,
    granularity: Annotated[Literal["hour", "day"], Query(description="hour: from the hourly rollup")] = "hour",
    start: Annotated[datetime | None, Query(alias="from", description="Window start (inclusive, ISO 8601)")] = None,
    end: Annotated[datetime | None, Query(alias="to", description="Window end (exclusive); default now")] = None,
) -> RolloutSeries:
    """Share of extension-reporting devices and of readings on each format (legacy ticks, new mm) per hour
    (default: the last 48 h, at most 31 days) or per day (default: the last 90 days)."""
    end = _aware(end) if end is not None else datetime.now(UTC) + timedelta(hours=1)
    default_span = timedelta(hours=48) if granularity == "hour" else timedelta(days=90)
    start = _aware(start) if start is not None else end - default_span
    longest = timedelta(hours=MAX_ROLLOUT_HOURS) if granularity == "hour" else timedelta(days=MAX_ROLLOUT_DAYS)
    if end - start > longest:
        start = end - longest
    source, rows = await queries.rollout_series(reader, granularity, start, end)
    return RolloutSeries(granularity=granularity, source=source, points=rows)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _metric_endpoint(metric: Metric):
    """A handler with exactly the query parameters this metric supports (FastAPI reads __signature__)."""

    async def endpoint(reader: AnalyticsReader, limit: int, offset: int, **filters: Any) -> dict[str, Any]:
        device_id = filters.pop("device_id", None)
        start = filters.pop("start", None)
        end = filters.pop("end", None)
        order = filters.pop("order", None)
        if isinstance(start, datetime):
            start = _aware(start)
        if isinstance(end, datetime):
            end = _aware(end)
        equals = {k: v for k, v in filters.items() if v is not None}
        rows, more = await queries.metric_page(
            reader,
            metric,
            limit=limit,
            offset=offset,
            device_id=device_id,
            start=start,
            end=end,
            order=order,
            equals=equals,
        )
        return {
            "metric": metric.name,
            "relation": f"{reader.schema}.{metric.name}",
            "description": metric.description,
            "page": Page(limit=limit, offset=offset, returned=len(rows), next_offset=offset + limit if more else None),
            "rows": rows,
        }

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("reader", kw, annotation=ReaderDep),
        inspect.Parameter("limit", kw, annotation=Limit, default=DEFAULT_LIMIT),
        inspect.Parameter("offset", kw, annotation=Offset, default=0),
    ]
    if metric.has_device:
        params.append(inspect.Parameter("device_id", kw, default=None, annotation=Annotated[int | None, Query(ge=1)]))
    if metric.time_column is not None:
        kind = metric.time_type or datetime
        unit = "UTC date, YYYY-MM-DD" if kind is date else "ISO 8601; no offset = UTC"
        for name, alias, text in (("start", "from", "inclusive"), ("end", "to", "exclusive")):
            description = f"{metric.time_column} {'>=' if name == 'start' else '<'} this ({text}; {unit})"
            params.append(
                inspect.Parameter(
                    name,
                    kw,
                    default=None,
                    annotation=Annotated[kind | None, Query(alias=alias, description=description)],
                )
            )
        params.append(
            inspect.Parameter(
                "order",
                kw,
                default=metric.default_order,
                annotation=Annotated[Literal["asc", "desc"], Query(description=f"by {metric.time_column}")],
            )
        )
    for column in metric.filters:
        params.append(
            inspect.Parameter(
                column,
                kw,
                default=None,
                annotation=Annotated[str | None, Query(max_length=200, description=f"{column} equals this")],
            )
        )

    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__name__ = metric.name
    endpoint.__doc__ = metric.description
    return endpoint


for _metric in METRICS:
    router.add_api_route(
        f"/{_metric.name}",
        _metric_endpoint(_metric),
        methods=["GET"],
        response_model=PAGE_MODELS[_metric.name],
        summary=_metric.title,
        name=_metric.name,
    )
