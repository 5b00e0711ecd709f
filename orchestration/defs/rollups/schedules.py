import os

import dagster as dg

from orchestration.defs.rollups.partitions import ingest_day_partitions

# Minute 5 of every hour by default: the last hour's facts have landed, and the UTC day partition
# the run targets is unambiguous.
ANALYTICS_HOURLY_CRON = os.getenv("ANALYTICS_HOURLY_CRON", "5 * * * *")

# Everything: seeds, staging, intermediate, marts, the rollup (today's partition), the key figures,
# every dbt test (source tests included) and the Python checks; not the data lifecycle (its own
# daily job, orchestration/defs/lifecycle).
analytics_hourly_job = dg.define_asset_job(
    name="analytics_hourly_job",
    selection=(dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks()) - dg.AssetSelection.groups("lifecycle"),
    partitions_def=ingest_day_partitions,
    description="dbt build of every model and test, today's rollup partition, the rollout key figures and checks.",
)


@dg.schedule(
    job=analytics_hourly_job,
    cron_schedule=ANALYTICS_HOURLY_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def analytics_hourly_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Refresh the marts, roll up today's new facts incrementally, run the tests and checks."""
    scheduled = context.scheduled_execution_time
    # The day the tick falls on is the open partition: its run rolls up from the watermark.
    partition_key = ingest_day_partitions.get_partition_key_for_timestamp(scheduled.timestamp())
    return dg.RunRequest(run_key=scheduled.isoformat(), partition_key=partition_key)
