"""Data lifecycle (docs/lifecycle.md): the day partitions kept ahead, and the archive of old days.

Both run in `lifecycle_daily_job`, never in the hourly analytics job. The work is the platform's
own commands (`iot-platform partitions`, `iot-platform archive`, from ingest_service/lifecycle/),
run against the database of the `postgres` resource as dbt is run: orchestration/ imports
nothing of the API's package. The default-partition check is plain SQL here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import dagster as dg
from psycopg import sql

from orchestration.lib.postgres import PostgresResource

GROUP = "lifecycle"
PARTITIONS_KEY = dg.AssetKey(["ingest", "day_partitions"])
ARCHIVE_KEY = dg.AssetKey(["ingest", "archive"])
DEFAULT_PARTITIONS_EMPTY = "ingest_default_partitions_empty"
ARCHIVE_MANIFESTS_MATCH = "archive_manifests_match"

# `python -m platform_cli`: this interpreter's, whatever PATH holds (as orchestration/lib/dbt/cli.py finds dbt).
IOT_PLATFORM = [sys.executable, "-m", "platform_cli"]

DEFAULT_PARTITIONS = """
select child.relname
from pg_inherits as i
join pg_class as parent on parent.oid = i.inhparent
join pg_class as child on child.oid = i.inhrelid
where parent.relnamespace = 'ingest'::regnamespace and pg_get_expr(child.relpartbound, child.oid) = 'DEFAULT'
order by child.relname
"""


class LifecycleFailed(Exception):
    """An `iot-platform` lifecycle command failed: its message."""


def database_url(postgres: PostgresResource) -> str:
    """The resource's database as the DATABASE_URL the platform's commands read (host may be a socket folder)."""
    auth = quote(postgres.user, safe="") + (":" + quote(postgres.password, safe="") if postgres.password else "")
    query = urlencode({"host": postgres.host, "port": postgres.port})
    return f"postgresql://{auth}@/{quote(postgres.dbname, safe='')}?{query}"


def run_command(postgres: PostgresResource, *args: str) -> dict[str, Any]:
    """`iot-platform <args> --json` on the resource's database (RETENTION_DAYS, ARCHIVE_URL from the environment)."""
    env = {**os.environ, "DATABASE_URL": database_url(postgres)}
    result = subprocess.run([*IOT_PLATFORM, *args, "--json"], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise LifecycleFailed(f"iot-platform {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@dg.asset(key=PARTITIONS_KEY, group_name=GROUP, owners=["team:ingest"], kinds={"python", "postgres"})
def day_partitions(postgres: PostgresResource) -> dg.MaterializeResult:
    """The day partitions of the ledger, facts and outcomes from a week back to a week ahead, created
    when missing (`iot-platform partitions`), never for a day the archive would drop."""
    out = run_command(postgres, "partitions")
    return dg.MaterializeResult(
        metadata={
            "created": dg.MetadataValue.int(len(out["created"])),
            "created_names": ", ".join(out["created"]) or "none",
            "window": " .. ".join(out["window"]),
            "partitions": dg.MetadataValue.int(out["partitions"]),
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
    counts: dict[str, int] = {}
    with postgres.connect() as conn:
        for row in conn.execute(DEFAULT_PARTITIONS).fetchall():
            name = row["relname"]
            count = conn.execute(sql.SQL("select count(*) as n from ingest.{}").format(sql.Identifier(name))).fetchone()
            assert count is not None
            counts[name] = int(count["n"])
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

    The check reads each day archived in the run back once more, apart from the archive's own
    verification, against its manifest (`iot-platform archive --verify DAY`)."""
    out = run_command(postgres, "archive")
    retention = out.get("retention_days")
    yield dg.MaterializeResult(
        metadata={
            "retention_days": retention if retention is not None else "unset (keep all)",
            "archive_url": out["archive_url"],
            "days_archived": dg.MetadataValue.int(len(out["days"])),
            "days": ", ".join(out["days"]) or "none",
            "rows_archived": dg.MetadataValue.int(out.get("rows", 0)),
        }
    )
    if not out["days"]:
        yield dg.AssetCheckResult(check_name=ARCHIVE_MANIFESTS_MATCH, passed=True, metadata={"days_verified": 0})
        return
    verify_args = [arg for day in out["days"] for arg in ("--verify", day)]
    try:
        verified = run_command(postgres, "archive", *verify_args)["verified"]
    except LifecycleFailed as exc:
        yield dg.AssetCheckResult(check_name=ARCHIVE_MANIFESTS_MATCH, passed=False, description=str(exc))
        return
    yield dg.AssetCheckResult(
        check_name=ARCHIVE_MANIFESTS_MATCH, passed=True, metadata={"days_verified": dg.MetadataValue.int(len(verified))}
    )
