"""What a request to the analytics routes may ask: their query models, validated at the edge.

Every parameter is checked before any SQL runs, so bad input gets 422 `invalid_parameter` with the
reason, never a database error: text without NUL characters (PostgreSQL text cannot hold them) and
at most 200 characters, integers within their column's type, times within 2000..2100 (no offset
means UTC), a window whose start comes before its end, and rollout windows of a bounded length.
A model route's query model is generated from its catalog entry (`metric_query_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, model_validator

from ingest_service.analytics.catalog import Column, Metric

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_OFFSET = 10_000_000
MAX_TEXT = 200
# No data is older than 2000 (the ingest API refuses such timestamps); beyond 2100 is a typo.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_ROLLOUT_SPAN = {"hour": timedelta(days=31), "day": timedelta(days=3 * 366)}
DEFAULT_ROLLOUT_SPAN = {"hour": timedelta(hours=48), "day": timedelta(days=90)}
# Range of each integer type, so a filter value PostgreSQL would refuse is refused here.
INT_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
BOUNDS = f"between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}"


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


def _utc_moment(moment: datetime) -> datetime:
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if not EARLIEST <= moment <= LATEST:  # compared before any conversion, which could overflow
        raise ValueError(f"must be {BOUNDS} (UTC)")
    return moment.astimezone(UTC)


def _day(day: date) -> date:
    if not EARLIEST.date() <= day <= LATEST.date():
        raise ValueError(f"must be {BOUNDS}")
    return day


Text = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_no_nul)]
UtcDateTime = Annotated[datetime, AfterValidator(_utc_moment)]
Day = Annotated[date, AfterValidator(_day)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description=f"Rows per page (1..{MAX_LIMIT})")]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, description="Rows to skip")]
DeviceId = Annotated[int, Field(ge=1, le=2**63 - 1, description="Only this device")]


def _int_type(bits: int) -> Any:
    return Annotated[int, Field(ge=-(2 ** (bits - 1)), le=2 ** (bits - 1) - 1)]


def filter_type(column: Column) -> Any:
    """The query parameter type that matches a column's dbt data_type."""
    if column.data_type in INT_BITS:
        return _int_type(INT_BITS[column.data_type])
    return {str: Text, float: Finite, bool: bool, date: Day, datetime: UtcDateTime}[column.py_type]


@dataclass(frozen=True)
class PageRequest:
    """A model route's validated parameters, the same shape for every model."""

    limit: int
    offset: int
    order: Literal["asc", "desc"]
    device_id: int | None = None
    start: date | datetime | None = None
    end: date | datetime | None = None
    equals: dict[str, Any] = field(default_factory=dict)  # exact-value filters given


class MetricQuery(BaseModel):
    """The parameters every model route takes; `metric_query_model` adds the model's own. Unknown
    parameters are refused."""

    model_config = ConfigDict(extra="forbid")

    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0

    @model_validator(mode="after")
    def _window_is_not_empty(self) -> Self:
        start, end = self.__dict__.get("start"), self.__dict__.get("end")
        if start is not None and end is not None and start >= end:
            raise ValueError(f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
        return self

    def page_request(self, metric: Metric) -> PageRequest:
        values = self.model_dump()
        return PageRequest(
            limit=values["limit"],
            offset=values["offset"],
            order=values.get("order", metric.default_order),
            device_id=values.get("device_id"),
            start=values.get("start"),
            end=values.get("end"),
            equals={name: values[name] for name in metric.filters if values[name] is not None},
        )


@lru_cache(maxsize=256)
def metric_query_model(metric: Metric) -> type[MetricQuery]:
    """The query model of one model route: device, time window and order when the model has them,
    one parameter per filter column, typed like the column."""
    fields: dict[str, Any] = {}
    if metric.has_device:
        fields["device_id"] = (DeviceId | None, None)
    if metric.time_column is not None:
        is_day = metric.column(metric.time_column).py_type is date
        kind = Day if is_day else UtcDateTime
        unit = "UTC date, YYYY-MM-DD" if is_day else "ISO 8601; no offset = UTC"
        for name, alias, op, text in (("start", "from", ">=", "inclusive"), ("end", "to", "<", "exclusive")):
            description = f"{metric.time_column} {op} this ({text}; {unit}; {BOUNDS})"
            fields[name] = (kind | None, Field(None, alias=alias, description=description))
        fields["order"] = (
            Literal["asc", "desc"],
            Field(metric.default_order, description=f"by {metric.time_column}, then {', '.join(metric.key)}"),
        )
    for name in metric.filters:
        fields[name] = (filter_type(metric.column(name)) | None, Field(None, description=f"{name} equals this"))
    return create_model(f"{_camel(metric.name)}Query", __base__=MetricQuery, **fields)


class RolloutQuery(BaseModel):
    """The window of the rollout series: by default the last 48 hours (per hour) or 90 days (per day),
    at most 31 days per hour and 3 years per day."""

    model_config = ConfigDict(extra="forbid")

    granularity: Literal["hour", "day"] = Field("hour", description="hour: per UTC hour; day: per UTC day")
    start: UtcDateTime | None = Field(None, alias="from", description=f"Window start (inclusive; {BOUNDS})")
    end: UtcDateTime | None = Field(None, alias="to", description="Window end (exclusive); default: the next hour")

    @model_validator(mode="after")
    def _window_is_bounded(self) -> Self:
        start, end = self.window()
        if start >= end:
            raise ValueError(f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
        longest = MAX_ROLLOUT_SPAN[self.granularity]
        if end - start > longest:
            raise ValueError(
                f"the window from {start.isoformat()} to {end.isoformat()} is longer than {longest.days} days, "
                f"the most a granularity={self.granularity} series covers: narrow it"
                + (" or ask granularity=day" if self.granularity == "hour" else "")
            )
        return self

    def window(self) -> tuple[datetime, datetime]:
        end = self.end if self.end is not None else _next_hour(datetime.now(UTC))
        start = self.start if self.start is not None else end - DEFAULT_ROLLOUT_SPAN[self.granularity]
        return start, end


def _next_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
