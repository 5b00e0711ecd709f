import os

import dagster as dg

from orchestration.defs.lifecycle.assets import GROUP

# 00:15 UTC: a new day has begun (the day just closed becomes archivable once it passes the
# retention), and the partitions a week ahead are created long before they are needed.
LIFECYCLE_DAILY_CRON = os.getenv("LIFECYCLE_DAILY_CRON", "15 0 * * *")

LIFECYCLE = dg.AssetSelection.groups(GROUP)

lifecycle_daily_job = dg.define_asset_job(
    name="lifecycle_daily_job",
    selection=LIFECYCLE,
    description="Day partitions kept ahead (and the default partitions checked empty), old days archived.",
)

lifecycle_daily_schedule = dg.ScheduleDefinition(
    name="lifecycle_daily_schedule",
    job=lifecycle_daily_job,
    cron_schedule=LIFECYCLE_DAILY_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
