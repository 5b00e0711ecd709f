import os

import dagster as dg

from orchestration.defs.dbt.assets import DbtConfig
from orchestration.defs.lifecycle.assets import GROUP as LIFECYCLE_GROUP

# Minute 5 of every hour by default: the last hour's facts have landed.
ANALYTICS_HOURLY_CRON = os.getenv("ANALYTICS_HOURLY_CRON", "5 * * * *")
# Once a day, off the hour (the hourly run at minute 5 is done by then on a quiet night).
ANALYTICS_DAILY_CRON = os.getenv("ANALYTICS_DAILY_CRON", "35 2 * * *")

# Everything but the data lifecycle (its own daily job, orchestration/defs/lifecycle): seeds,
# staging, intermediate, marts, the key figures, every dbt test (source tests included) and the
# Python checks.
EVERYTHING = dg.AssetSelection.all() | dg.AssetSelection.all_asset_checks()
ANALYTICS = EVERYTHING - dg.AssetSelection.groups(LIFECYCLE_GROUP)

# One process, one dbt invocation: the step-worker processes of the multiprocess executor cost
# about 5 s each, more than most steps' work.
analytics_hourly_job = dg.define_asset_job(
    name="analytics_hourly_job",
    selection=ANALYTICS,
    executor_def=dg.in_process_executor,
    description=(
        "One incremental `dbt build` (the marts' changed days, every dbt test over the changed window), "
        "the rollout key figures and the Python checks, in one process."
    ),
)

analytics_daily_job = dg.define_asset_job(
    name="analytics_daily_job",
    selection=ANALYTICS,
    executor_def=dg.in_process_executor,
    config=dg.RunConfig(ops={"dbt_models": DbtConfig(full_refresh=True)}),
    description=(
        "`dbt build --full-refresh`: every table rebuilt from all history and every dbt test over all of it "
        "(what the hourly run's incremental marts and windowed tests must agree with), then the key figures and "
        "the Python checks."
    ),
)


@dg.schedule(
    job=analytics_hourly_job,
    cron_schedule=ANALYTICS_HOURLY_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def analytics_hourly_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Bring the marts up to date incrementally, test the changed window, run the checks."""
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())


@dg.schedule(
    job=analytics_daily_job,
    cron_schedule=ANALYTICS_DAILY_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def analytics_daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Rebuild every mart from all history and test all of it."""
    return dg.RunRequest(run_key=context.scheduled_execution_time.isoformat())
