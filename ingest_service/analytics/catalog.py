"""What the analytics routes may read: the dbt marts (one route each) and the curated example queries.

Every relation, column and SQL text comes from this module; a request only picks a name and binds
filter values as parameters. `tests/analytics/test_catalog.py` checks the catalog against the dbt
models' YAML, so a renamed or added column fails a test instead of a route.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

# dbt data_type -> Python type of the JSON value.
PY_TYPES: dict[str, type] = {
    "bigint": int,
    "integer": int,
    "smallint": int,
    "double precision": float,
    "numeric": float,
    "text": str,
    "boolean": bool,
    "date": date,
    "timestamp with time zone": datetime,
}


@dataclass(frozen=True)
class Metric:
    """One dbt model in the analytics schema, exposed as `GET /analytics/<name>`."""

    name: str
    title: str
    description: str
    columns: tuple[tuple[str, str], ...]  # (column, dbt data_type), in the model's order
    key: tuple[str, ...]  # stable order (and tie-breaker after the time column)
    time_column: str | None = None  # filtered by from/to; ordered by it first
    default_order: Literal["asc", "desc"] = "asc"
    filters: tuple[str, ...] = ()  # text columns filterable by exact value

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def has_device(self) -> bool:
        return "device_id" in self.column_names

    @property
    def time_type(self) -> type | None:
        if self.time_column is None:
            return None
        return PY_TYPES[dict(self.columns)[self.time_column]]


def _cols(spec: str) -> tuple[tuple[str, str], ...]:
    """'a:bigint, b:text' -> (('a', 'bigint'), ('b', 'text'))."""
    out = []
    for part in spec.split(","):
        name, _, dtype = part.strip().partition(":")
        out.append((name.strip(), dtype.strip()))
    return tuple(out)


TS = "timestamp with time zone"
DP = "double precision"

METRICS: tuple[Metric, ...] = (
    Metric(
        "fct_rollout_format_share_daily",
        "Rollout: format share per day",
        "Per UTC day and extension format (legacy ticks, new mm): devices and readings on the format and "
        "their share of the day's extension-reporting devices and readings.",
        _cols(
            f"report_date:date, payload_format:text, devices:bigint, readings:bigint, total_devices:bigint, "
            f"total_readings:bigint, device_share:{DP}, reading_share:{DP}"
        ),
        key=("report_date", "payload_format"),
        time_column="report_date",
        filters=("payload_format",),
    ),
    Metric(
        "fct_rollout_device_state_daily",
        "Rollout: device states per day",
        "Per UTC day: devices legacy-only, new-only or migrated (sent both formats) by the end of the day.",
        _cols(
            "report_date:date, legacy_only_devices:bigint, new_only_devices:bigint, migrated_devices:bigint, "
            "total_devices:bigint"
        ),
        key=("report_date",),
        time_column="report_date",
    ),
    Metric(
        "fct_rollout_key_figures",
        "Rollout key figures",
        "One row, every figure from one watermark (data_as_of): the new format's device and reading share and "
        "the device states of that UTC day, the day's error rates, side switches all time and in the last hour.",
        _cols(
            f"data_as_of:{TS}, report_date:date, new_format_device_share:{DP}, new_format_reading_share:{DP}, "
            "extension_devices:bigint, extension_readings:bigint, legacy_only_devices:bigint, "
            f"new_only_devices:bigint, migrated_devices:bigint, ingest_error_rate:{DP}, "
            f"ingest_error_rate_legacy:{DP}, ingest_error_rate_new:{DP}, ingest_error_rate_common:{DP}, "
            "side_switches_total:bigint, side_switches_last_hour:bigint"
        ),
        key=("report_date",),
    ),
    Metric(
        "fct_ingest_error_rate_daily",
        "Ingest error rate per day",
        "Per UTC day of receipt, payload format and rejection reason: errors, all errors of the format, "
        "raw records of the format and the two rates.",
        _cols(
            f"report_date:date, payload_format:text, reason:text, errors:bigint, format_errors:bigint, "
            f"raw_records:bigint, error_rate:{DP}, format_error_rate:{DP}"
        ),
        key=("report_date", "payload_format", "reason"),
        time_column="report_date",
        filters=("payload_format", "reason"),
    ),
    Metric(
        "fct_readings_hourly",
        "Hourly readings rollup",
        "Per UTC hour, device and record type: reading count, min/max/avg/sum in the native unit and, for "
        "platform extension, in mm.",
        _cols(
            f"hour_start:{TS}, device_id:bigint, record_type_id:smallint, record_type_name:text, "
            f"payload_format:text, measure:text, unit:text, reading_count:bigint, min_value:{DP}, "
            f"max_value:{DP}, avg_value:{DP}, sum_value:{DP}, min_mm:{DP}, max_mm:{DP}, avg_mm:{DP}, "
            f"sum_mm:{DP}, first_observed_at:{TS}, last_observed_at:{TS}, last_ingested_at:{TS}"
        ),
        key=("device_id", "record_type_id"),
        time_column="hour_start",
        default_order="desc",
        filters=("record_type_name", "payload_format", "measure"),
    ),
    Metric(
        "v_platform_extension_mm",
        "Unified platform extension (mm)",
        "Every platform extension reading, legacy ticks and new mm, with its source value and the value "
        "in mm converted at read time (20 ticks = 1 mm unless the device is calibrated).",
        _cols(
            f"device_id:bigint, observed_at:{TS}, source_type:text, source_format:text, source_value:{DP}, "
            f"extension_mm:{DP}, is_calibrated:boolean, processed_record_id:bigint, ingested_at:{TS}"
        ),
        key=("processed_record_id",),
        time_column="observed_at",
        default_order="desc",
        filters=("source_type", "source_format"),
    ),
    Metric(
        "ingest_parse",
        "Ingest outcome per raw record",
        "One row per raw ledger record: its outcome (processed, duplicate, provisioned, error), device, "
        "format and, for errors, the reason and detail.",
        _cols(
            f"raw_record_id:bigint, received_at:{TS}, request_id:text, batch_index:integer, outcome:text, "
            f"parse_ok:boolean, device_id:bigint, processed_record_id:bigint, record_type_id:smallint, "
            f"event_type:text, payload_format:text, reason:text, detail:text"
        ),
        key=("raw_record_id",),
        time_column="received_at",
        default_order="desc",
        filters=("outcome", "payload_format", "reason", "event_type"),
    ),
    Metric(
        "metric_counts_by_format",
        "Readings and devices per format",
        "Per platform extension record type (legacy ticks, new mm): readings and devices, all time.",
        _cols("source_type:text, source_format:text, reading_count:bigint, device_count:bigint"),
        key=("source_type",),
    ),
    Metric(
        "metric_devices_both_formats",
        "Devices reporting both formats",
        "Devices that have reported platform extension in both legacy ticks and new mm, with counts and "
        "the time span of each format.",
        _cols(
            f"device_id:bigint, legacy_ticks_readings:bigint, new_mm_readings:bigint, first_legacy_at:{TS}, "
            f"last_legacy_at:{TS}, first_new_at:{TS}, last_new_at:{TS}"
        ),
        key=("device_id",),
    ),
    Metric(
        "metric_recent_unified_readings",
        "Most recent unified readings",
        "The most recent platform extension readings across all devices and both formats, in mm "
        "(as of the last dbt build).",
        _cols(
            f"recency_rank:bigint, device_id:bigint, observed_at:{TS}, source_type:text, source_value:{DP}, "
            f"extension_mm:{DP}, processed_record_id:bigint"
        ),
        key=("recency_rank", "processed_record_id"),
        filters=("source_type",),
    ),
    Metric(
        "metric_avg_extension_by_source",
        "Average extension by source format",
        "Per device: mean extension in mm over new readings only, legacy readings only (converted), and all.",
        _cols(
            f"device_id:bigint, avg_new_only_mm:{DP}, avg_legacy_only_mm:{DP}, avg_all_mm:{DP}, "
            f"new_readings:bigint, legacy_readings:bigint"
        ),
        key=("device_id",),
    ),
    Metric(
        "metric_avg_extension_mm",
        "Average extension (mm)",
        "Per device: mean platform extension in mm over all readings (both formats).",
        _cols(f"device_id:bigint, avg_extension_mm:{DP}, reading_count:bigint"),
        key=("device_id",),
    ),
    Metric(
        "metric_extension_vs_retraction",
        "Extensions vs retractions",
        "Per device: readings higher (extension), lower (retraction) or equal to the previous reading in mm.",
        _cols("device_id:bigint, extensions:bigint, retractions:bigint, unchanged:bigint"),
        key=("device_id",),
    ),
    Metric(
        "metric_side_switches",
        "Left/right side switches (all time)",
        "Per device: left-to-right and right-to-left sign changes of the unified mm series, zero ignored.",
        _cols("device_id:bigint, left_to_right:bigint, right_to_left:bigint, total_side_switches:bigint"),
        key=("device_id",),
    ),
    Metric(
        "metric_side_switches_last_hour",
        "Left/right side switches (last hour)",
        "Per device with readings in the hour before the last dbt build: side switches within that hour.",
        _cols(
            f"device_id:bigint, left_to_right:bigint, right_to_left:bigint, total_side_switches:bigint, "
            f"window_start:{TS}"
        ),
        key=("device_id",),
    ),
    Metric(
        "metric_battery_summary",
        "Battery summary",
        "Per device: min, max and mean battery charge (%) and the time of its latest reading.",
        _cols(f"device_id:bigint, min_pct:{DP}, max_pct:{DP}, avg_pct:{DP}, reading_count:bigint, last_seen_at:{TS}"),
        key=("device_id",),
    ),
    Metric(
        "metric_platform_height",
        "Platform height",
        "Per device: min, max and mean platform height in mm.",
        _cols(f"device_id:bigint, min_height_mm:{DP}, max_height_mm:{DP}, avg_height_mm:{DP}, reading_count:bigint"),
        key=("device_id",),
    ),
)

METRICS_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


@dataclass(frozen=True)
class Example:
    """A curated, fixed query over the analytics schema (the seed's example queries)."""

    name: str
    title: str
    description: str
    sql: str
    reads: tuple[str, ...]  # relations it reads (for the empty-state message)


# Unqualified names: analytics connections run with search_path = the analytics schema.
EXAMPLES: tuple[Example, ...] = (
    Example(
        "counts_by_type",
        "Legacy vs new: readings per format",
        "How many platform extension readings (and devices) arrived in the legacy ticks format and in the "
        "new mm format, with each format's share of the readings.",
        """\
-- readings and devices per platform extension format, all time
select
    source_type,                    -- platform_extension_ticks (legacy) or platform_extension_mm (new)
    source_format,                  -- legacy or new
    reading_count,
    device_count,
    round((reading_count::numeric / sum(reading_count) over ()), 4)::float8 as reading_share
from metric_counts_by_format
order by source_type""",
        ("metric_counts_by_format",),
    ),
    Example(
        "devices_both_formats",
        "Devices reporting both formats",
        "Devices that sent platform extension in both formats: proof that upgraded devices keep their id "
        "and that dual ingest works, with how long each device overlapped.",
        """\
-- devices seen in both formats, and when each format was seen
select
    device_id,
    legacy_ticks_readings,
    new_mm_readings,
    first_legacy_at,
    last_legacy_at,
    first_new_at,
    last_new_at
from metric_devices_both_formats
order by device_id""",
        ("metric_devices_both_formats",),
    ),
    Example(
        "unified_recent",
        "Most recent readings, unified to mm",
        "The latest platform extension readings of all devices: the stored value in its own unit next to "
        "the value in mm (ticks converted at read time, never rewritten).",
        """\
-- the most recent readings, source value next to the unified mm value
select
    device_id,
    observed_at,
    source_type,
    source_value,                   -- as stored: ticks or mm
    extension_mm                    -- ticks / 20 (or the device calibration), mm as is
from metric_recent_unified_readings
order by recency_rank, processed_record_id""",
        ("metric_recent_unified_readings",),
    ),
    Example(
        "averages_compared",
        "Average extension: new-only vs legacy-only vs unified",
        "Per device, the mean extension in mm over its new readings, over its legacy readings converted, "
        "and over both; a large gap between the first two hints at a calibration problem.",
        """\
-- mean extension per device by source format, and the gap between the formats
select
    device_id,
    avg_new_only_mm,
    avg_legacy_only_mm,
    avg_all_mm,
    avg_new_only_mm - avg_legacy_only_mm as new_minus_legacy_mm,
    new_readings,
    legacy_readings
from metric_avg_extension_by_source
order by device_id""",
        ("metric_avg_extension_by_source",),
    ),
    Example(
        "side_switches",
        "Left/right side switches, all time",
        "Per device, how often the platform crossed from left (negative mm) to right (positive) and back, "
        "on the unified series, ignoring centre (zero) readings. Most switches first.",
        """\
-- side switches per device on the unified mm series (zero ignored), most first
select
    device_id,
    left_to_right,
    right_to_left,
    total_side_switches
from metric_side_switches
order by total_side_switches desc, device_id""",
        ("metric_side_switches",),
    ),
    Example(
        "side_switches_last_hour",
        "Left/right side switches, last hour",
        "The same count restricted to the hour before the last dbt build (window_start tells which hour).",
        """\
-- side switches in the last hour before the dbt build, most first
select
    device_id,
    left_to_right,
    right_to_left,
    total_side_switches,
    window_start
from metric_side_switches_last_hour
order by total_side_switches desc, device_id""",
        ("metric_side_switches_last_hour",),
    ),
)

EXAMPLES_BY_NAME: dict[str, Example] = {e.name: e for e in EXAMPLES}

# Rows an example answers at most (the SQL has no LIMIT of its own so that it reads like the seed's).
EXAMPLE_MAX_ROWS = 500
