"""SQL the analytics routes run, composed only from catalog identifiers; request values are parameters."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from psycopg import sql

from ingest_service.analytics.catalog import EXAMPLE_MAX_ROWS, Example, Metric
from ingest_service.analytics.reader import AnalyticsReader


async def metric_page(
    reader: AnalyticsReader,
    metric: Metric,
    *,
    limit: int,
    offset: int,
    device_id: int | None = None,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    order: Literal["asc", "desc"] | None = None,
    equals: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """One page of a metric (limit + 1 rows are read to know whether another page follows)."""
    where: list[sql.Composable] = []
    params: list[Any] = []
    if device_id is not None:
        where.append(sql.SQL("device_id = %s"))
        params.append(device_id)
    if metric.time_column is not None:
        column = sql.Identifier(metric.time_column)
        if start is not None:
            where.append(sql.SQL("{} >= %s").format(column))
            params.append(start)
        if end is not None:
            where.append(sql.SQL("{} < %s").format(column))
            params.append(end)
    for name, value in (equals or {}).items():
        if name not in metric.filters:
            raise ValueError(f"{name} is not a filter of {metric.name}")
        where.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
        params.append(value)

    direction = sql.SQL("desc" if (order or metric.default_order) == "desc" else "asc")
    order_by = [sql.SQL("{} {}").format(sql.Identifier(metric.time_column), direction)] if metric.time_column else []
    order_by += [sql.SQL("{} {}").format(sql.Identifier(k), direction) for k in metric.key]

    query = sql.SQL("select {columns} from {relation}{where} order by {order} limit %s offset %s").format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in metric.column_names),
        relation=reader.relation(metric.name),
        where=sql.SQL(" where ") + sql.SQL(" and ").join(where) if where else sql.SQL(""),
        order=sql.SQL(", ").join(order_by),
    )
    rows = await reader.fetch(query, [*params, limit + 1, offset], reads=metric.name)
    return rows[:limit], len(rows) > limit


async def run_example(reader: AnalyticsReader, example: Example) -> tuple[list[str], list[dict[str, Any]], bool]:
    """The example's fixed SQL; at most EXAMPLE_MAX_ROWS rows are returned."""
    query = sql.SQL("select * from ({}) as example limit {}").format(
        sql.SQL(example.sql),  # type: ignore[arg-type]  # a constant from the catalog, never request text
        sql.Literal(EXAMPLE_MAX_ROWS + 1),
    )
    columns, rows = await reader.fetch_with_columns(query, reads=", ".join(example.reads))
    return columns, rows[:EXAMPLE_MAX_ROWS], len(rows) > EXAMPLE_MAX_ROWS


ROLLOUT_HOURLY = """\
with per_format as (
    select hour_start as bucket_start, payload_format,
           count(distinct device_id) as devices, sum(reading_count)::bigint as readings
    from {relation}
    where measure = 'platform_extension' and payload_format in ('legacy', 'new')
      and hour_start >= %s and hour_start < %s
    group by hour_start, payload_format
), per_bucket as (
    select hour_start as bucket_start,
           count(distinct device_id) as total_devices, sum(reading_count)::bigint as total_readings
    from {relation}
    where measure = 'platform_extension' and payload_format in ('legacy', 'new')
      and hour_start >= %s and hour_start < %s
    group by hour_start
)
select f.bucket_start, f.payload_format, f.devices, f.readings, b.total_devices, b.total_readings,
       f.devices::float8 / b.total_devices as device_share,
       f.readings::float8 / b.total_readings as reading_share
from per_format f join per_bucket b using (bucket_start)
order by f.bucket_start, f.payload_format"""

ROLLOUT_DAILY = """\
select report_date as bucket_start, payload_format, devices, readings, total_devices, total_readings,
       device_share, reading_share
from {relation}
where report_date >= %s and report_date < %s
order by report_date, payload_format"""


async def rollout_series(
    reader: AnalyticsReader, granularity: Literal["hour", "day"], start: datetime, end: datetime
) -> tuple[str, list[dict[str, Any]]]:
    """Share of devices and readings on each extension format per hour (from the hourly rollup) or
    per day (fct_rollout_format_share_daily)."""
    if granularity == "hour":
        source = "fct_readings_hourly"
        query = sql.SQL(ROLLOUT_HOURLY).format(relation=reader.relation(source))  # type: ignore[arg-type]
        params: list[Any] = [start, end, start, end]
    else:
        source = "fct_rollout_format_share_daily"
        query = sql.SQL(ROLLOUT_DAILY).format(relation=reader.relation(source))  # type: ignore[arg-type]
        params = [start.date(), end.date() if end.time() == datetime.min.time() else _next_day(end)]
    return source, await reader.fetch(query, params, reads=source)


def _next_day(moment: datetime) -> date:
    from datetime import timedelta

    return (moment + timedelta(days=1)).date()
