"""Data lifecycle (docs/lifecycle.md): the day partitions kept ahead, and the archive of old days.

Both run in `lifecycle_daily_job`, never in the hourly analytics job. The work is
ingest_service.lifecycle's; these assets run it against the platform's database and record it.
"""

from collections.abc import Iterator

import dagster as dg
import psycopg

from ingest_service.core.config import Settings
from ingest_service.lifecycle import archive, partitions
from orchestration.lib.postgres import PostgresResource

GROUP = "lifecycle"
PARTITIONS_KEY = dg.AssetKey(["ingest", "day_partitions"])
ARCHIVE_KEY = dg.AssetKey(["ingest", "archive"])
DEFAULT_PARTITIONS_EMPTY = "ingest_default_partitions_empty"
ARCHIVE_MANIFESTS_MATCH = "archive_manifests_match"


def lifecycle_settings() -> Settings:
    """RETENTION_DAYS and ARCHIVE_URL as the API and `iot-platform archive` read them (environment, .env)."""
    return Settings(dev_mode=True)


def _connect(postgres: PostgresResource) -> psycopg.Connection:
    # Not the resource's read-only connection: these assets create, detach and drop partitions.
    return psycopg.connect(postgres.conninfo, autocommit=True)


@dg.asset(key=PARTITIONS_KEY, group_name=GROUP, owners=["team:ingest"], kinds={"python", "postgres"})
def day_partitions(postgres: PostgresResource) -> dg.MaterializeResult:
    """The day partitions of the ledger, facts and outcomes, from DAYS_BEHIND back to DAYS_AHEAD ahead
    (created when missing, never for a day the archive would drop)."""
    settings = lifecycle_settings()
    first, last = partitions.window(settings.retention_days)
    with _connect(postgres) as conn:
        created = partitions.ensure(conn, first, last)
        count = len(partitions.list_partitions(conn))
    return dg.MaterializeResult(
        metadata={
            "created": dg.MetadataValue.int(len(created)),
            "created_names": ", ".join(created) or "none",
            "window": f"{first.isoformat()} .. {last.isoformat()}",
            "partitions": dg.MetadataValue.int(count),
        }
    )


@dg.asset_check(
    asset=PARTITIONS_KEY,
    name=DEFAULT_PARTITIONS_EMPTY,
    description=(
        "No row in a default partition: a row lands there only when its day partition is missing (an event "
        "time beyond the window, a stopped maintenance schedule, a day already archived). Nothing is lost, "
        "but the day cannot be created or archived until the rows are moved: see docs/lifecycle.md."
    ),
)
def default_partitions_empty(postgres: PostgresResource) -> dg.AssetCheckResult:
    with _connect(postgres) as conn:
        counts = partitions.default_partition_rows(conn)
    holding = {name: rows for name, rows in counts.items() if rows}
    return dg.AssetCheckResult(
        passed=not holding,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={name: dg.MetadataValue.int(rows) for name, rows in counts.items()},
        description=", ".join(f"{n}: {r:,} rows" for n, r in holding.items()) or None,
    )


@dg.asset(
    key=ARCHIVE_KEY,
    deps=[PARTITIONS_KEY],
    group_name=GROUP,
    owners=["team:ingest"],
    kinds={"python", "postgres", "parquet"},
    check_specs=[dg.AssetCheckSpec(ARCHIVE_MANIFESTS_MATCH, asset=ARCHIVE_KEY)],
)
def ingest_archive(postgres: PostgresResource) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Day partitions older than RETENTION_DAYS written to Parquet under ARCHIVE_URL with a manifest,
    verified, then detached and dropped (`iot-platform archive`). RETENTION_DAYS unset: nothing.

    The check reads each archived day's files back once more, apart from the archive's own
    verification, against their manifest (bytes, rows, id range, row hash)."""
    settings = lifecycle_settings()
    with _connect(postgres) as conn:
        results = archive.archive(conn, settings.resolved_archive_url, settings.retention_days)
    yield dg.MaterializeResult(
        metadata={
            "retention_days": settings.retention_days if settings.retention_days is not None else "unset (keep all)",
            "archive_url": settings.resolved_archive_url,
            "days_archived": dg.MetadataValue.int(len(results)),
            "days": ", ".join(r.day.isoformat() for r in results) or "none",
            "rows_archived": dg.MetadataValue.int(sum(f.rows for r in results for f in r.files)),
        }
    )
    try:
        manifests = archive.verify_archive(settings.resolved_archive_url, [r.day for r in results])
    except archive.ArchiveError as exc:
        yield dg.AssetCheckResult(check_name=ARCHIVE_MANIFESTS_MATCH, passed=False, description=str(exc))
        return
    yield dg.AssetCheckResult(
        check_name=ARCHIVE_MANIFESTS_MATCH,
        passed=True,
        metadata={"days_verified": dg.MetadataValue.int(len(manifests))},
    )
