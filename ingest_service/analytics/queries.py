"""SQL the analytics routes run: relations and columns from the catalog (the dbt manifest), request
values as bound parameters. Every aggregation is a dbt mart; these only filter, order and page."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Literal

from psycopg import sql

from ingest_service.analytics.catalog import DEVICE_COLUMN, Catalog, Metric
from ingest_service.analytics.examples import EXAMPLE_MAX_ROWS, Example
from ingest_service.analytics.parameters import PageRequest
from ingest_service.analytics.reader import AnalyticsReader

# The rollout series per granularity: the dbt mart it reads and that mart's time column.
ROLLOUT_SOURCES: dict[str, tuple[str, str]] = {
    "hour": ("fct_rollout_format_share_hourly", "hour_start"),
    "day": ("fct_rollout_format_share_daily", "report_date"),
}
ROLLOUT_COLUMNS = ("payload_format", "devices", "readings", "total_devices", "total_readings")
ROLLOUT_SHARES = ("device_share", "reading_share")


async def metric_page(
    reader: AnalyticsReader, metric: Metric, params: PageRequest
) -> tuple[list[dict[str, Any]], bool]:
    """One page of a model (limit + 1 rows are read to know whether another page follows)."""
    where: list[sql.Composable] = []
    values: list[Any] = []
    if params.device_id is not None:
        where.append(sql.SQL("{} = %s").format(sql.Identifier(DEVICE_COLUMN)))
        values.append(params.device_id)
    if metric.time_column is not None:
        column = sql.Identifier(metric.time_column)
        if params.start is not None:
            where.append(sql.SQL("{} >= %s").format(column))
            values.append(params.start)
        if params.end is not None:
            where.append(sql.SQL("{} < %s").format(column))
            values.append(params.end)
    for name, value in params.equals.items():
        where.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
        values.append(value)

    direction = sql.SQL("desc" if params.order == "desc" else "asc")
    ordering = [metric.time_column] if metric.time_column else []
    ordering += [k for k in metric.key if k not in ordering]

    query = sql.SQL("select {columns} from {relation}{where} order by {order} limit %s offset %s").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in metric.column_names),
        relation=metric.relation,
        where=sql.SQL(" where ") + sql.SQL(" and ").join(where) if where else sql.SQL(""),
        order=sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), direction) for c in ordering),
    )
    rows = await reader.fetch(query, [*values, params.limit + 1, params.offset], reads=metric.name)
    return rows[: params.limit], len(rows) > params.limit


def build_time_query(relation: sql.Identifier) -> sql.Composed:
    """When the dbt build that last built the marts began (the one-row analytics_build mart)."""
    return sql.SQL("select max(built_at) as built_at from {}").format(relation)


async def run_example(
    reader: AnalyticsReader, catalog: Catalog, example: Example
) -> tuple[list[str], list[dict[str, Any]], bool]:
    """The example's fixed SQL; at most EXAMPLE_MAX_ROWS rows are returned."""
    query = sql.SQL("select * from ({}) as example limit {}").format(
        example.query(catalog), sql.Literal(EXAMPLE_MAX_ROWS + 1)
    )
    columns, rows = await reader.fetch_with_columns(query, reads=", ".join(example.reads))
    return columns, rows[:EXAMPLE_MAX_ROWS], len(rows) > EXAMPLE_MAX_ROWS


async def rollout_series(
    reader: AnalyticsReader,
    catalog: Catalog,
    granularity: Literal["hour", "day"],
    start: datetime,
    end: datetime,
) -> tuple[str, list[dict[str, Any]]]:
    """Share of devices and readings on each extension format per hour or per day in [start, end)
    (a day counts when any part of it is in the window)."""
    source, time_column = ROLLOUT_SOURCES[granularity]
    bounds: list[Any] = [start, end] if granularity == "hour" else [start.date(), _day_after(end)]
    column = sql.Identifier(time_column)
    query = sql.SQL(
        "select {time} as bucket_start, {columns} from {relation} where {time} >= %s and {time} < %s "
        "order by {time}, payload_format"
    ).format(
        time=column,
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in (*ROLLOUT_COLUMNS, *ROLLOUT_SHARES)),
        relation=catalog.relation(source),
    )
    return source, await reader.fetch(query, bounds, reads=source)


def _day_after(end: datetime) -> date:
    """The first day not in a window ending (exclusively) at `end`."""
    return end.date() if end.time() == datetime.min.time() else (end + timedelta(days=1)).date()
