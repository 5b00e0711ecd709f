"""The curated example queries of the analytics API (the seed's example queries, over the marts).

Each SQL names the dbt models it reads as `{model}`: the answer shows the SQL with the bare model
names, and it runs with the relations of the dbt manifest in their place. Nothing from a request
ever becomes SQL: an example is picked by name.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import LiteralString

from psycopg.sql import SQL, Composed

from ingest_service.analytics.catalog import Catalog


@dataclass(frozen=True)
class Example:
    name: str
    title: str
    description: str
    template: LiteralString  # SQL with `{model}` placeholders

    @property
    def reads(self) -> tuple[str, ...]:
        """The dbt models the SQL reads."""
        return tuple(dict.fromkeys(field for _, field, _, _ in string.Formatter().parse(self.template) if field))

    @property
    def sql(self) -> str:
        """The SQL as shown: the model names in place of the placeholders."""
        return self.template.format(**{model: model for model in self.reads})

    def query(self, catalog: Catalog) -> Composed:
        """The SQL as run: the manifest's relations in place of the placeholders."""
        return SQL(self.template).format(**{model: catalog.relation(model) for model in self.reads})


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
from {metric_counts_by_format}
order by source_type""",
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
from {metric_devices_both_formats}
order by device_id""",
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
from {metric_recent_unified_readings}
order by recency_rank, processed_record_id""",
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
from {metric_avg_extension_by_source}
order by device_id""",
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
from {metric_side_switches}
order by total_side_switches desc, device_id""",
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
from {metric_side_switches_last_hour}
order by total_side_switches desc, device_id""",
    ),
)

EXAMPLES_BY_NAME: dict[str, Example] = {e.name: e for e in EXAMPLES}

# Rows an example answers at most (the SQL has no LIMIT of its own so that it reads like the seed's).
EXAMPLE_MAX_ROWS = 500
