"""The day partitions of the ledger, facts and outcomes (migration 0006, docs/lifecycle.md).

The rule for one partition lives in the database (`ingest.create_day_partition()`); this module
says which days to create, lists what exists and counts what fell into a default partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg

# Partitions exist this many days ahead of today (UTC), so a stopped maintenance schedule has a
# week before a row lands in a default partition, and from this many days back: facts are
# partitioned by the event's own time, and a device that was offline sends days-old readings.
# (More days back cost every migrated database relations: 5 tables and their indexes per day.)
DAYS_AHEAD = 7
DAYS_BEHIND = 7

PARTITION_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")

LIST_PARTITIONS = """
select parent.relname, child.relname, pg_get_expr(child.relpartbound, child.oid) = 'DEFAULT'
from pg_inherits as i
join pg_class as parent on parent.oid = i.inhparent
join pg_class as child on child.oid = i.inhrelid
join pg_partitioned_table as p on p.partrelid = parent.oid
where parent.relnamespace = 'ingest'::regnamespace
order by parent.relname, child.relname
"""

PARTITIONED_TABLES = """
select c.relname, a.attname
from pg_partitioned_table as p
join pg_class as c on c.oid = p.partrelid
join pg_attribute as a on a.attrelid = c.oid and a.attnum = p.partattrs[0]
where c.relnamespace = 'ingest'::regnamespace
order by c.relname
"""


@dataclass(frozen=True, order=True)
class Partition:
    table: str  # the partitioned parent, e.g. raw_record
    name: str  # e.g. raw_record_p20261207 or raw_record_default
    day: date | None  # None for the default partition


def today() -> date:
    return datetime.now(UTC).date()


def parse_day(text: str) -> date:
    """A day as `YYYY-MM-DD`, `YYYYMMDD` or a partition name (`raw_record_p20261207`)."""
    match = PARTITION_NAME.match(text)
    digits = match.group("day") if match else text.replace("-", "")
    try:
        return datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"not a day or a day partition: {text!r} (expected YYYY-MM-DD or <table>_pYYYYMMDD)") from None


def partitioned_tables(conn: psycopg.Connection) -> dict[str, str]:
    """Each partitioned ingest table and its partition key column."""
    return dict(conn.execute(PARTITIONED_TABLES).fetchall())


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    partitions = []
    for table, name, is_default in conn.execute(LIST_PARTITIONS).fetchall():
        match = PARTITION_NAME.match(name)
        day = None if is_default or not match else parse_day(match.group("day"))
        partitions.append(Partition(table, name, day))
    return partitions


def window(retention_days: int | None, on: date | None = None) -> tuple[date, date]:
    """The days whose partitions should exist: DAYS_BEHIND back (never a day archive would drop) to DAYS_AHEAD."""
    day = on or today()
    first = day - timedelta(days=DAYS_BEHIND)
    if retention_days is not None:
        first = max(first, day - timedelta(days=retention_days))
    return first, day + timedelta(days=DAYS_AHEAD)


def ensure(conn: psycopg.Connection, first: date, last: date) -> list[str]:
    """Create the missing day partitions of every partitioned table for [first, last]; their names."""
    with conn.transaction():
        rows = conn.execute("select ingest.ensure_day_partitions(%s, %s)", (first, last)).fetchall()
    return [row[0] for row in rows]


def ensure_ahead(conn: psycopg.Connection, retention_days: int | None, on: date | None = None) -> list[str]:
    return ensure(conn, *window(retention_days, on))


def default_partition_rows(conn: psycopg.Connection) -> dict[str, int]:
    """Rows in each default partition: any is a day partition missing (see the maintenance asset)."""
    counts = {}
    for partition in list_partitions(conn):
        if partition.day is None:
            row = conn.execute(f'select count(*) from ingest."{partition.name}"').fetchone()
            counts[partition.name] = int(row[0]) if row else 0
    return counts
