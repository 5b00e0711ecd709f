from datetime import UTC, datetime

import dagster as dg
from dagster_dbt import DbtCliResource, dbt_assets, get_asset_key_for_model

from orchestration.defs.dbt import assets as dbt_defs
from orchestration.defs.dbt.project import dbt_project
from orchestration.defs.rollups.partitions import ingest_day_partitions
from orchestration.lib.dbt.args import dbt_build_args, rollup_vars
from orchestration.lib.postgres import PostgresResource


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=dbt_defs.translator,
    select=dbt_defs.INCREMENTAL_SELECTOR,
    partitions_def=ingest_day_partitions,
    # A backfill of many days is one dbt run from the first day's start, not one run per day.
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=dbt_defs.DBT_POOL,
)
def dbt_rollup_models(context: dg.AssetExecutionContext, dbt: DbtCliResource, config: dbt_defs.DbtConfig):
    """The incremental hourly rollup (fct_readings_hourly), partitioned by the UTC day facts were ingested."""
    dbt_vars = rollup_vars(context.partition_time_window, datetime.now(UTC))
    args = dbt_build_args(full_refresh=config.full_refresh, dbt_vars=dbt_vars)
    yield from dbt.cli(args, context=context).stream().fetch_row_counts()


def _model(name: str) -> dg.AssetKey:
    return get_asset_key_for_model([dbt_defs.dbt_analytics_models], name)


@dg.asset(
    deps=[
        _model("fct_rollout_format_share_daily"),
        _model("fct_rollout_device_state_daily"),
        _model("fct_ingest_error_rate_daily"),
        _model("metric_side_switches"),
        _model("metric_side_switches_last_hour"),
    ],
    group_name="marts",
    owners=["team:data"],
    kinds={"python", "postgres"},
)
def rollout_key_figures(postgres: PostgresResource) -> dg.MaterializeResult:
    """The firmware rollout at a glance, for the latest UTC day in the marts.

    Stores nothing: it reads the rollout marts and records their key numbers as numeric metadata, so
    the asset page plots them over runs (share of devices and readings on the new mm format, devices
    by state, ingest error rate per format, left/right sign switches).
    """
    return dg.MaterializeResult(metadata=_key_figures(postgres))


def _key_figures(postgres: PostgresResource) -> dict[str, dg.MetadataValue]:
    share = postgres.fetch_one(
        """
        select
            max(report_date) as report_date,
            coalesce(max(device_share) filter (where payload_format = 'new'), 0) as new_device_share,
            coalesce(max(reading_share) filter (where payload_format = 'new'), 0) as new_reading_share,
            coalesce(max(total_devices), 0) as devices,
            coalesce(max(total_readings), 0) as readings
        from analytics.fct_rollout_format_share_daily
        where report_date = (select max(report_date) from analytics.fct_rollout_format_share_daily)
        """
    )
    states = postgres.fetch_one(
        """
        select
            coalesce(sum(legacy_only_devices), 0) as legacy_only,
            coalesce(sum(new_only_devices), 0) as new_only,
            coalesce(sum(migrated_devices), 0) as migrated
        from analytics.fct_rollout_device_state_daily
        where report_date = (select max(report_date) from analytics.fct_rollout_device_state_daily)
        """
    )
    # format_error_rate repeats on every reason row of a (day, format): take it once per format.
    errors = postgres.fetch_all(
        """
        select payload_format, max(format_errors) as errors, max(raw_records) as raw_records
        from analytics.fct_ingest_error_rate_daily
        where report_date = (select max(report_date) from analytics.fct_ingest_error_rate_daily)
        group by payload_format
        """
    )
    switches = postgres.fetch_one(
        """
        select
            (select coalesce(sum(total_side_switches), 0) from analytics.metric_side_switches) as all_time,
            (select coalesce(sum(total_side_switches), 0) from analytics.metric_side_switches_last_hour)
                as last_hour
        """
    )
    rate_by_format = {row["payload_format"]: row["errors"] / row["raw_records"] for row in errors if row["raw_records"]}
    total_raw = sum(row["raw_records"] for row in errors)
    total_errors = sum(row["errors"] for row in errors)

    metadata: dict[str, dg.MetadataValue] = {
        "report_date": dg.MetadataValue.text(str(share["report_date"] or "")),
        "new_format_device_share": dg.MetadataValue.float(float(share["new_device_share"])),
        "new_format_reading_share": dg.MetadataValue.float(float(share["new_reading_share"])),
        "extension_devices": dg.MetadataValue.int(int(share["devices"])),
        "extension_readings": dg.MetadataValue.int(int(share["readings"])),
        "legacy_only_devices": dg.MetadataValue.int(int(states["legacy_only"])),
        "new_only_devices": dg.MetadataValue.int(int(states["new_only"])),
        "migrated_devices": dg.MetadataValue.int(int(states["migrated"])),
        "ingest_error_rate": dg.MetadataValue.float(total_errors / total_raw if total_raw else 0.0),
        "side_switches_total": dg.MetadataValue.int(int(switches["all_time"])),
        "side_switches_last_hour": dg.MetadataValue.int(int(switches["last_hour"])),
    }
    for payload_format in ("legacy", "new", "common"):
        metadata[f"ingest_error_rate_{payload_format}"] = dg.MetadataValue.float(
            float(rate_by_format.get(payload_format, 0.0))
        )
    return metadata
