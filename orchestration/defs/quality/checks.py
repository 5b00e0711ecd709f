"""Data-quality checks beyond dbt's data tests, which are checks already (the ledger accounting is
one of them: dbt's singular test, blocking on `staging/stg_ingest__raw_records`):

- the ingest error rate per format, against an operator threshold over a recent window;
- the ingest tables' freshness, judged as `dbt source freshness` does from the thresholds in the
  sources' YAML (`config.freshness`: loaded_at_field, warn_after, error_after, filter), one check
  per source that has them. One SQL query per source, in process: starting dbt for it would cost
  the hourly run a second dbt invocation (about 10 s of set-up) for a millisecond query.
"""

import os
from collections.abc import Iterator

import dagster as dg
from dagster_dbt import get_asset_key_for_model
from dagster_dbt.asset_utils import get_manifest_and_translator_from_dbt_assets
from psycopg import sql

from orchestration.defs.dbt import assets as dbt_defs
from orchestration.defs.dbt.project import dbt_project
from orchestration.lib.dbt.manifest import freshness_status, relation, sources_with_freshness
from orchestration.lib.postgres import PostgresResource

INGEST_ERROR_RATE_WITHIN_THRESHOLD = "ingest_error_rate_within_threshold"
SOURCE_IS_FRESH = "source_is_fresh"

# Formats of known record types; `startup` and `unknown` (no usable event_type at all) are
# reported in the metadata but not held to the threshold.
RATED_FORMATS = ("legacy", "new", "common")

MANIFEST = get_manifest_and_translator_from_dbt_assets([dbt_defs.dbt_models])[0]


class ErrorRateConfig(dg.Config):
    """Thresholds for the error-rate check; the defaults come from the environment."""

    threshold: float = float(os.getenv("INGEST_ERROR_RATE_THRESHOLD", "0.35"))
    window_minutes: int = int(os.getenv("INGEST_ERROR_RATE_WINDOW_MINUTES", "60"))
    # Fewer items than this in the window are too few to call a rate.
    min_records: int = int(os.getenv("INGEST_ERROR_RATE_MIN_RECORDS", "50"))


ERROR_RATE_SQL = sql.SQL(
    """
    select
        payload_format,
        count(*) as raw_records,
        count(*) filter (where outcome = 'error') as errors
    from {ingest_parse}
    where received_at >= now() - make_interval(mins => %(window)s)
    group by payload_format
    order by payload_format
    """
).format(ingest_parse=relation(MANIFEST, "ingest_parse"))


@dg.asset_check(
    asset=get_asset_key_for_model([dbt_defs.dbt_models], "ingest_parse"),
    name=INGEST_ERROR_RATE_WITHIN_THRESHOLD,
    description=(
        "Share of rejected items per payload format (legacy, new, common) received in the last window, "
        "against INGEST_ERROR_RATE_THRESHOLD. A failure is an error burst: a firmware sending bad payloads, "
        "or a schema/record-type change the API rejects. The rollout should pause until it is understood."
    ),
)
def ingest_error_rate_within_threshold(postgres: PostgresResource, config: ErrorRateConfig) -> dg.AssetCheckResult:
    rows = postgres.fetch_all(ERROR_RATE_SQL, {"window": config.window_minutes})
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


def _freshness_spec(unique_id: str) -> dg.AssetCheckSpec:
    source = MANIFEST["sources"][unique_id]
    key = dbt_defs.translator.get_asset_spec(MANIFEST, unique_id, dbt_project).key
    criteria = source["freshness"]
    levels = ", ".join(
        f"{level.split('_')[0]} after {criteria[level]['count']} {criteria[level]['period']}"
        for level in ("warn_after", "error_after")
        if (criteria.get(level) or {}).get("count")
    )
    return dg.AssetCheckSpec(
        SOURCE_IS_FRESH,
        asset=key,
        description=(
            f"dbt source freshness: the newest {source['loaded_at_field']} is recent ({levels}). A failure "
            "means nothing new is arriving: the API, the gateways or the devices are down, or everything is "
            "rejected."
        ),
    )


FRESHNESS_SPECS = {unique_id: _freshness_spec(unique_id) for unique_id in sources_with_freshness(MANIFEST)}


@dg.multi_asset_check(
    specs=list(FRESHNESS_SPECS.values()),
    name="ingest_sources_are_fresh",
    description="dbt's source freshness over the ingest tables that declare a freshness threshold.",
)
def ingest_sources_are_fresh(postgres: PostgresResource) -> Iterator[dg.AssetCheckResult]:
    for unique_id, spec in FRESHNESS_SPECS.items():
        source = MANIFEST["sources"][unique_id]
        query = sql.SQL("select max({loaded_at}) as max_loaded_at, now() as snapshotted_at from {table} where {filter}")
        row = postgres.fetch_one(
            query.format(
                loaded_at=sql.SQL(source["loaded_at_field"]),
                table=sql.Identifier(source["schema"], source["identifier"]),
                filter=sql.SQL((source.get("freshness") or {}).get("filter") or "true"),
            )
        )
        status, age = freshness_status(source["freshness"], row["max_loaded_at"], row["snapshotted_at"])
        metadata: dict[str, dg.RawMetadataValue] = {"status": status}
        if row["max_loaded_at"] is not None:
            metadata["max_loaded_at"] = row["max_loaded_at"].isoformat()
            metadata["age_minutes"] = dg.MetadataValue.float(round(age / 60, 2))
        yield dg.AssetCheckResult(
            asset_key=spec.asset_key,
            check_name=spec.name,
            passed=status == "pass",
            severity=dg.AssetCheckSeverity.WARN if status == "warn" else dg.AssetCheckSeverity.ERROR,
            metadata=metadata,
            description=None if row["max_loaded_at"] is not None else "the table has no rows",
        )
