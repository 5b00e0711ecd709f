"""Read-only analytics: one route per dbt model that opts in (`meta.analytics`), the curated example
queries, the rollout series and the build status.

Everything here reads the analytics schema through the analyst role (ingest_service.analytics.reader)
and needs `Authorization: Bearer <ANALYTICS_API_KEY>` (open in dev mode when no key is set). The model
routes are generated from the dbt manifest and swapped in place when dbt rewrites it
(`install_metric_routes`), so a new mart is served after `dbt build` without a restart.
"""

# No `from __future__ import annotations` here: each model route's endpoint annotates its query
# model, a class made at run time, and FastAPI must see the class itself, not its name.

from collections.abc import Callable, Coroutine
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ingest_service.analytics import queries
from ingest_service.analytics.catalog import Catalog, Metric
from ingest_service.analytics.examples import EXAMPLES, EXAMPLES_BY_NAME
from ingest_service.analytics.parameters import MAX_LIMIT, MetricQuery, RolloutQuery, metric_query_model
from ingest_service.analytics.reader import AnalyticsUnavailable, first_build_at, not_built
from ingest_service.analytics.schemas import (
    AnalyticsError,
    AnalyticsIndex,
    AnalyticsStatus,
    AnalyticsValidationError,
    ExampleList,
    ExampleResult,
    ExampleSummary,
    MetricInfo,
    Page,
    RolloutSeries,
    page_model,
)
from ingest_service.api.analytics_deps import AnalyticsAuth, CatalogDep, ManifestCatalogDep, ReaderDep
from ingest_service.api.deps import SettingsDep

PREFIX = "/analytics"
BUILD_MODEL = "analytics_build"  # the one-row mart that says when dbt last built the marts

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": AnalyticsError, "description": "Missing or wrong analytics key"},
    422: {"model": AnalyticsValidationError, "description": "A parameter is out of range, mistyped or unknown"},
    503: {
        "model": AnalyticsError,
        "description": "The analytics schema cannot answer: not built by dbt yet (analytics_not_built, with when the "
        "first build is due), role or grants missing, timeout, database down, or no ANALYTICS_API_KEY outside dev mode",
    },
}


class AnalyticsRoute(APIRoute):
    """Answers a request whose parameters do not validate with 422 `invalid_parameter` in the analytics
    error shape (FastAPI's custom route class pattern), saying which parameter and why; the value
    itself is not echoed."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return invalid_parameters(exc)

        return route_handler


def invalid_parameters(exc: RequestValidationError) -> JSONResponse:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part not in ("query", "path")]
        problems.append({"parameter": loc[-1] if loc else None, "problem": error["msg"], "type": error["type"]})
    detail = "; ".join(f"{p['parameter']}: {p['problem']}" if p["parameter"] else p["problem"] for p in problems)
    body = {"status": "error", "reason": "invalid_parameter", "detail": detail, "errors": problems}
    return JSONResponse(body, status_code=422)


router = APIRouter(
    prefix=PREFIX, tags=["analytics"], dependencies=[AnalyticsAuth], responses=ERRORS, route_class=AnalyticsRoute
)


def _path(name: str) -> str:
    return f"{PREFIX}/{name}"


@router.get("/", response_model=AnalyticsIndex, summary="List the model routes and examples")
async def index(catalog: CatalogDep) -> AnalyticsIndex:
    """Every model route (a dbt model with `meta.analytics`) with its columns and filters."""
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
            for m in catalog.metrics.values()
        ],
        examples_path=_path("examples"),
        max_limit=MAX_LIMIT,
    )


@router.get("/status", response_model=AnalyticsStatus, summary="Whether dbt has built the models, and when")
async def status(settings: SettingsDep, source: ManifestCatalogDep, reader: ReaderDep) -> AnalyticsStatus:
    """`built_at`: when the dbt build that last built the marts began (the data is as of then). Before
    the first build: `built` is false and `detail` says when it is due."""
    catalog = source.catalog
    served = list(catalog.metrics) if catalog is not None else []
    not_served = dict(catalog.problems) if catalog is not None else {}
    try:
        if catalog is None:
            raise not_built(settings, "The analytics models are")
        if BUILD_MODEL not in catalog.relations:
            raise not_built(settings, f"{BUILD_MODEL} is")
        rows = await reader.fetch(queries.build_time_query(catalog.relation(BUILD_MODEL)), reads=BUILD_MODEL)
    except AnalyticsUnavailable as exc:
        if exc.reason != "analytics_not_built":
            raise
        return AnalyticsStatus(
            built=False,
            built_at=None,
            first_build_at=first_build_at(settings),
            detail=exc.detail,
            models=served,
            not_served=not_served,
        )
    built_at = rows[0]["built_at"].astimezone(UTC) if rows and rows[0]["built_at"] else None
    return AnalyticsStatus(
        built=built_at is not None,
        built_at=built_at,
        first_build_at=None,
        detail=f"data as of {built_at:%Y-%m-%d %H:%M:%S} UTC (the last dbt build)" if built_at else "not built yet",
        models=served,
        not_served=not_served,
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
    name: Annotated[str, Path(description="Example name, e.g. side_switches")], reader: ReaderDep, catalog: CatalogDep
) -> ExampleResult:
    """Runs the named example's fixed SQL (nothing from the request becomes SQL) and returns it with its rows."""
    example = EXAMPLES_BY_NAME.get(name)
    if example is None:
        known = ", ".join(EXAMPLES_BY_NAME)
        raise AnalyticsUnavailable("unknown_example", f"no example named {name[:80]!r}; known: {known}", 404)
    columns, rows, truncated = await queries.run_example(reader, catalog, example)
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
    reader: ReaderDep, catalog: CatalogDep, params: Annotated[RolloutQuery, Query()]
) -> RolloutSeries:
    """Share of extension-reporting devices and of readings on each format (legacy ticks, new mm) per hour
    (default: the last 48 h, at most 31 days) or per day (default: the last 90 days, at most 3 years)."""
    start, end = params.window()
    source, rows = await queries.rollout_series(reader, catalog, params.granularity, start, end)
    return RolloutSeries.model_validate({"granularity": params.granularity, "source": source, "points": rows})


def _metric_endpoint(metric: Metric) -> Callable[..., Coroutine[Any, Any, dict[str, Any]]]:
    async def endpoint(reader: ReaderDep, params: MetricQuery) -> dict[str, Any]:
        request = params.page_request(metric)
        rows, more = await queries.metric_page(reader, metric, request)
        next_offset = request.offset + request.limit if more else None
        return {
            "metric": metric.name,
            "relation": metric.relation_name,
            "description": metric.description,
            "page": Page(limit=request.limit, offset=request.offset, returned=len(rows), next_offset=next_offset),
            "rows": rows,
        }

    # The model's own query model (its filters, typed like its columns), read by FastAPI from here.
    endpoint.__annotations__["params"] = Annotated[metric_query_model(metric), Query()]
    endpoint.__name__ = metric.name
    endpoint.__doc__ = metric.description
    return endpoint


async def unknown_metric(name: str, catalog: CatalogDep) -> None:
    """Any other name: not a served model (this route comes after the model routes)."""
    raise AnalyticsUnavailable(
        "unknown_metric", f"no dbt model named {name[:80]!r} is served here; GET {PREFIX}/ lists them", 404
    )


def metric_router(catalog: Catalog | None) -> APIRouter:
    """One route per served model of `catalog`, then the catch-all `/analytics/{name}` (404, or 503
    `analytics_not_built` while there is no manifest)."""
    models = APIRouter(
        prefix=PREFIX, tags=["analytics"], dependencies=[AnalyticsAuth], responses=ERRORS, route_class=AnalyticsRoute
    )
    for metric in catalog.metrics.values() if catalog is not None else ():
        models.add_api_route(
            f"/{metric.name}",
            _metric_endpoint(metric),
            methods=["GET"],
            response_model=page_model(metric),
            summary=metric.title,
            name=metric.name,
        )
    models.add_api_route(
        "/{name}",
        unknown_metric,
        methods=["GET"],
        include_in_schema=False,
        responses={404: {"model": AnalyticsError, "description": "No served model of that name"}},
    )
    return models


def install_metric_routes(app: FastAPI, catalog: Catalog | None) -> None:
    """Put the model routes of `catalog` into the app in place of the previous ones. They come last:
    their catch-all must not shadow the fixed analytics routes (`/analytics/status`...), and no other
    router has paths under /analytics/. The OpenAPI document is rebuilt on its next request."""
    routes = app.router.routes
    count = len(routes)
    app.include_router(metric_router(catalog))
    new = routes[count:]
    for route in getattr(app.state, "analytics_metric_routes", []):
        routes.remove(route)
    app.state.analytics_metric_routes = new
    app.openapi_schema = None
