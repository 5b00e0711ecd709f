import os

import dagster as dg

# A partition is a UTC day of *ingestion* (`ingested_at`), the axis the incremental rollup's
# watermark runs on. end_offset=1 adds today's (open) partition, which the hourly schedule runs.
ingest_day_partitions = dg.DailyPartitionsDefinition(
    start_date=os.getenv("ROLLUP_START_DATE", "2026-01-01"),
    timezone="UTC",
    end_offset=1,
)
