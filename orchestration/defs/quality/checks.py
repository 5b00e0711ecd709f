"""Data-quality rules dbt cannot express: accounting across the ingest tables, rates against
operator thresholds, and the age of the newest fact. dbt's own tests are checks already."""

import os

import dagster as dg
from dagster_dbt import get_asset_key_for_model

from orchestration.defs.dbt import assets as dbt_defs
from orchestration.lib.postgres import PostgresResource

LEDGER_ACCOUNTS_FOR_EVERY_RAW_ROW = "ledger_accounts_for_every_raw_row"
INGEST_ERROR_RATE_WITHIN_THRESHOLD = "ingest_error_rate_within_threshold"
FACTS_ARE_FRESH = "facts_are_fresh"

# Formats of known record types; `startup` and `unknown` (no usable event_type at all) are
# reported in the metadata but not held to the threshold.
RATED_FORMATS = ("legacy", "new", "common")


def _staging_model(name: str) -> dg.AssetKey:
    return get_asset_key_for_model([dbt_defs.dbt_staging_models], name)


def _analytics_model(name: str) -> dg.AssetKey:
    return get_asset_key_for_model([dbt_defs.dbt_analytics_models], name)


LEDGER_SQL = """
with outcomes as (
    select raw_record_id from ingest.processed_record
    union all
    select raw_record_id from ingest.raw_duplicate
    union all
    select raw_record_id from ingest.device_startup
    union all
    select raw_record_id from ingest.ingest_error
),
per_raw_row as (
    select raw_record_id, count(*) as outcomes from outcomes group by raw_record_id
)
select
    (select count(*) from ingest.raw_record) as raw_rows,
    (select count(*) from ingest.processed_record) as facts,
    (select count(*) from ingest.raw_duplicate) as duplicates,
    (select count(*) from ingest.device_startup) as provisioned,
    (select count(*) from ingest.ingest_error) as errors,
    (select count(*) from ingest.raw_record as raw
        where not exists (select from per_raw_row where per_raw_row.raw_record_id = raw.id)) as without_outcome,
    (select count(*) from per_raw_row where outcomes > 1) as with_several_outcomes,
    (select count(*) from per_raw_row
        where not exists (select from ingest.raw_record as raw where raw.id = per_raw_row.raw_record_id))
        as outcomes_without_raw_row
"""


@dg.asset_check(
    asset=_staging_model("stg_ingest__raw_records"),
    name=LEDGER_ACCOUNTS_FOR_EVERY_RAW_ROW,
    blocking=True,
    description=(
        "Ledger accounting: raw rows = facts + duplicates + provisioned startups + errors, and every raw row "
        "has exactly one outcome. A failure means the API dropped or double-wrote an item; it blocks the "
        "marts and metrics of the run, which would be computed from an incomplete ledger."
    ),
)
def ledger_accounts_for_every_raw_row(postgres: PostgresResource) -> dg.AssetCheckResult:
    # One statement, one snapshot: the API writes a raw row and its outcome in one transaction.
    counts = postgres.fetch_one(LEDGER_SQL)
    accounted = counts["facts"] + counts["duplicates"] + counts["provisioned"] + counts["errors"]
    passed = (
        counts["raw_rows"] == accounted
        and counts["without_outcome"] == 0
        and counts["with_several_outcomes"] == 0
        and counts["outcomes_without_raw_row"] == 0
    )
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={**{k: dg.MetadataValue.int(int(v)) for k, v in counts.items()}, "accounted": accounted},
    )


class ErrorRateConfig(dg.Config):
    """Thresholds for the error-rate check; the defaults come from the environment."""

    threshold: float = float(os.getenv("INGEST_ERROR_RATE_THRESHOLD", "0.35"))
    window_minutes: int = int(os.getenv("INGEST_ERROR_RATE_WINDOW_MINUTES", "60"))
    # Fewer items than this in the window are too few to call a rate.
    min_records: int = int(os.getenv("INGEST_ERROR_RATE_MIN_RECORDS", "50"))


@dg.asset_check(
    asset=_analytics_model("ingest_parse"),
    name=INGEST_ERROR_RATE_WITHIN_THRESHOLD,
    description=(
        "Share of rejected items per payload format (legacy, new, common) received in the last window, "
        "against INGEST_ERROR_RATE_THRESHOLD. A failure is an error burst: a firmware sending bad payloads, "
        "or a schema/record-type change the API rejects. The rollout should pause until it is understood."
    ),
)
def ingest_error_rate_within_threshold(postgres: PostgresResource, config: ErrorRateConfig) -> dg.AssetCheckResult:
    rows = postgres.fetch_all(
        """
        select
            payload_format,
            count(*) as raw_records,
            count(*) filter (where outcome = 'error') as errors
        from analytics.ingest_parse
        where received_at >= now() - make_interval(mins => %(window)s)
        group by payload_format
        order by payload_format
        """,
        {"window": config.window_minutes},
    )
    rates = {row["payload_format"]: row["errors"] / row["raw_records"] for row in rows}
    over = sorted(
        row["payload_format"]
        for row in rows
        if row["payload_format"] in RATED_FORMATS
        and row["raw_records"] >= config.min_records
        and rates[row["payload_format"]] > config.threshold
    )
    metadata: dict[str, dg.RawMetadataValue] = {
        "threshold": dg.MetadataValue.float(config.threshold),
        "window_minutes": config.window_minutes,
        "formats_over_threshold": ", ".join(over) or "none",
    }
    for row in rows:
        metadata[f"error_rate_{row['payload_format']}"] = dg.MetadataValue.float(rates[row["payload_format"]])
        metadata[f"raw_records_{row['payload_format']}"] = dg.MetadataValue.int(row["raw_records"])
    return dg.AssetCheckResult(passed=not over, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


class FactsFreshnessConfig(dg.Config):
    max_age_minutes: int = int(os.getenv("FACTS_MAX_AGE_MINUTES", "30"))


@dg.asset_check(
    asset=_staging_model("stg_ingest__processed_records"),
    name=FACTS_ARE_FRESH,
    description=(
        "The newest fact (max ingested_at) is at most FACTS_MAX_AGE_MINUTES old. A failure means no valid "
        "telemetry is arriving: the API, the gateways or the publisher are down, or every item is rejected."
    ),
)
def facts_are_fresh(postgres: PostgresResource, config: FactsFreshnessConfig) -> dg.AssetCheckResult:
    row = postgres.fetch_one(
        """
        select
            max(ingested_at) as newest,
            extract(epoch from now() - max(ingested_at)) / 60.0 as age_minutes
        from ingest.processed_record
        """
    )
    metadata: dict[str, dg.RawMetadataValue] = {"max_age_minutes": config.max_age_minutes}
    if row["newest"] is None:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata, description="no facts at all"
        )
    age = float(row["age_minutes"])
    metadata["newest_ingested_at"] = row["newest"].isoformat()
    metadata["age_minutes"] = dg.MetadataValue.float(round(age, 2))
    return dg.AssetCheckResult(
        passed=age <= config.max_age_minutes, severity=dg.AssetCheckSeverity.WARN, metadata=metadata
    )
