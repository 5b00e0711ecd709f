"""Bulk-load N synthetic facts (and their raw ledger rows) with COPY, for dbt benchmarks.

    .venv/bin/python scripts/bulk_load_facts.py --database iot_bench_1m --facts 1000000 --recreate
    .venv/bin/python scripts/bulk_load_facts.py --database iot_bench_1m --append-hour

The data has the shape of the firmware rollout: ~40% of devices stay on legacy firmware (ticks),
~30% are new devices (provisioned ids, mm) and ~30% migrate from ticks to mm at a random moment;
activity per device is skewed (a few chatty devices); 60% of facts are platform extension, 20%
battery, 20% platform height; facts arrive at a steady rate over `--days` ending an hour ago, and
~1% are ingested late (up to 6 h after their record time). Every fact has its raw row (the API's
"one outcome per raw row" holds). `--append-hour` adds one more hour of facts after the newest
one, ingested now: the input for timing one incremental rollup run.

The server is DATABASE_URL's, or the embedded PostgreSQL; the database is created and migrated
when missing. Never point it at a database whose data you care about: `--recreate` drops it.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from ingest_service.core import migrate
from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget, resolve_target
from ingest_service.lifecycle import partitions

PROVISIONED_ID_BASE = 2**31
TYPE_TICKS, TYPE_MM, TYPE_BATTERY, TYPE_HEIGHT = 1, 2, 3, 4
TYPE_NAMES = {
    TYPE_TICKS: "platform_extension_ticks",
    TYPE_MM: "platform_extension_mm",
    TYPE_BATTERY: "battery_charge",
    TYPE_HEIGHT: "platform_height_mm",
}
CHUNK = 50_000


@dataclass(frozen=True)
class Device:
    id: int
    kind: str  # legacy | new | migrating
    migrate_at: float  # epoch seconds; ticks before, mm from then on (migrating devices only)
    weight: float


def _server() -> DatabaseTarget:
    return resolve_target(Settings(dev_mode=True))


def _devices(rng: random.Random, count: int, start: float, end: float) -> list[Device]:
    devices = []
    for i in range(count):
        roll = rng.random()
        kind = "legacy" if roll < 0.4 else "new" if roll < 0.7 else "migrating"
        device_id = PROVISIONED_ID_BASE + i if kind == "new" else 1000 + i
        devices.append(Device(device_id, kind, rng.uniform(start, end), rng.paretovariate(1.5)))
    return devices


def _extension_type(device: Device, ts: float) -> int:
    if device.kind == "legacy" or (device.kind == "migrating" and ts < device.migrate_at):
        return TYPE_TICKS
    return TYPE_MM


def _value(rng: random.Random, type_id: int) -> float:
    if type_id == TYPE_TICKS:
        return float(rng.randint(0, 3000))
    if type_id == TYPE_MM:
        return round(rng.uniform(-150, 150), 2)
    if type_id == TYPE_BATTERY:
        return round(rng.uniform(0, 100), 1)
    return round(rng.uniform(0, 200), 1)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _copy_escape(text: str) -> str:
    return text.replace("\\", "\\\\")


def _next_ids(conn: psycopg.Connection) -> tuple[int, int]:
    raw = conn.execute("select coalesce(max(id), 0) + 1 from ingest.raw_record").fetchone()
    fact = conn.execute("select coalesce(max(id), 0) + 1 from ingest.processed_record").fetchone()
    assert raw and fact
    return int(raw[0]), int(fact[0])


def load(
    conn: psycopg.Connection,
    devices: list[Device],
    facts: int,
    start: float,
    end: float,
    rng: random.Random,
    ingest_now: float | None = None,
) -> None:
    """COPY `facts` facts with record times spread evenly over [start, end)."""
    raw_id, fact_id = _next_ids(conn)
    weights = [d.weight for d in devices]
    cum: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        cum.append(total)
    step = (end - start) / facts
    load_started = time.time()
    request = f"bulk-{int(time.time())}"
    done = 0
    while done < facts:
        n = min(CHUNK, facts - done)
        chosen = rng.choices(devices, cum_weights=cum, k=n)
        raw_buf, fact_buf = io.StringIO(), io.StringIO()
        for j, device in enumerate(chosen):
            ts = start + (done + j) * step
            kind = rng.random()
            type_id = _extension_type(device, ts) if kind < 0.6 else TYPE_BATTERY if kind < 0.8 else TYPE_HEIGHT
            value = _value(rng, type_id)
            if ingest_now is not None:
                ingested = ingest_now
            elif rng.random() < 0.01:
                ingested = min(ts + rng.uniform(60, 6 * 3600), load_started)
            else:
                ingested = min(ts + rng.uniform(0.05, 2.0), load_started)
            ingested_iso = _iso(ingested)
            payload = json.dumps(
                {"device_id": device.id, "event_type": TYPE_NAMES[type_id], "value": value, "timestamp": ts},
                separators=(",", ":"),
            )
            raw_buf.write(
                f"{raw_id}\t{ingested_iso}\t{request}-{(done + j) // 500}\t{(done + j) % 500}\t"
                f"application/json\t{_copy_escape(payload)}\n"
            )
            fact_buf.write(f"{fact_id}\t{raw_id}\t{device.id}\t{type_id}\t{_iso(ts)}\t{value!r}\t{ingested_iso}\n")
            raw_id += 1
            fact_id += 1
        with conn.cursor() as cur:
            with cur.copy(
                "copy ingest.raw_record (id, received_at, request_id, batch_index, content_type, payload) from stdin"
            ) as copy:
                copy.write(raw_buf.getvalue())
            with cur.copy(
                "copy ingest.processed_record (id, raw_record_id, device_id, record_type_id, record_time, value, "
                "ingested_at) from stdin"
            ) as copy:
                copy.write(fact_buf.getvalue())
        done += n
        if done % 1_000_000 < CHUNK:
            conn.commit()
            print(f"  {done:>12,} facts", file=sys.stderr, flush=True)
    conn.execute("select setval('ingest.raw_record_id_seq', (select max(id) from ingest.raw_record))")
    conn.execute(
        "select setval(pg_get_serial_sequence('ingest.processed_record', 'id'), "
        "(select max(id) from ingest.processed_record))"
    )
    conn.commit()


def ensure_days(conn: psycopg.Connection, start: float, end: float) -> None:
    """The day partitions of [start, end] (record and arrival times), so no row lands in a default partition."""
    first = datetime.fromtimestamp(start, UTC).date()
    last = max(datetime.fromtimestamp(end + 6 * 3600, UTC).date(), datetime.now(UTC).date())
    conn.commit()
    partitions.ensure(conn, first, last)
    conn.commit()


def drop_secondary_structures(conn: psycopg.Connection) -> list[str]:
    """Drop the facts' and ledger's secondary indexes and foreign keys; return the DDL to restore them.

    Maintaining five indexes and three foreign-key checks per row makes COPY several times slower
    than building them once afterwards. Only for a dedicated benchmark database.
    """
    restore: list[str] = []
    tables = ("ingest.processed_record", "ingest.raw_record")
    for table in tables:
        for name, ddl in conn.execute(
            "select conname, pg_get_constraintdef(oid) from pg_constraint "
            "where conrelid = %s::regclass and contype = 'f'",
            (table,),
        ).fetchall():
            conn.execute(f"alter table {table} drop constraint {name}")
            restore.append(f"alter table {table} add constraint {name} {ddl}")
        for name, ddl in conn.execute(
            "select i.relname, pg_get_indexdef(i.oid) from pg_index x join pg_class i on i.oid = x.indexrelid "
            "where x.indrelid = %s::regclass and not x.indisprimary",
            (table,),
        ).fetchall():
            conn.execute(f"drop index ingest.{name}")
            # A partitioned table's index reads `ON ONLY <parent>`, which would build no partition's index.
            restore.insert(0, ddl.replace(" ON ONLY ", " ON "))
    conn.commit()
    return restore


def insert_devices(conn: psycopg.Connection, devices: list[Device], start: float, end: float) -> None:
    with (
        conn.cursor() as cur,
        cur.copy(
            "copy ingest.device (id, serial, firmware, origin, provisioned_at, first_seen_at, last_seen_at) from stdin"
        ) as copy,
    ):
        for d in devices:
            provisioned = d.kind == "new"
            copy.write_row(
                (
                    d.id,
                    f"SN-{d.id}" if provisioned else None,
                    "2.0.0" if d.kind != "legacy" else None,
                    "provisioned" if provisioned else "legacy",
                    _iso(start) if provisioned else None,
                    _iso(start),
                    _iso(end),
                )
            )
    conn.commit()


def preload(
    conn: psycopg.Connection,
    facts: int,
    days: float,
    rng: random.Random,
    n_devices: int | None = None,
    *,
    fast: bool = False,
) -> int:
    """A history of `facts` facts over `days` ending an hour ago, into a database without one; the devices' count."""
    end = time.time() - 3600
    start = end - days * 86400
    n_devices = n_devices or max(50, facts // 5000)
    devices = _devices(rng, n_devices, start, end)
    ensure_days(conn, start, end)
    insert_devices(conn, devices, start, end)
    restore = drop_secondary_structures(conn) if fast else []
    load(conn, devices, facts, start, end, rng)
    for ddl in restore:
        print(f"  {ddl[:100]}", file=sys.stderr, flush=True)
        conn.execute(ddl)
    conn.commit()
    conn.execute("analyze ingest.raw_record")
    conn.execute("analyze ingest.processed_record")
    conn.execute("analyze ingest.device")
    conn.commit()
    return n_devices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="iot_bench")
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--devices", type=int, help="default: facts / 5000, at least 50")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--recreate", action="store_true", help="drop and recreate the database first")
    parser.add_argument(
        "--append-hour", action="store_true", help="add one hour of facts after the newest one, ingested now"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="drop the secondary indexes and foreign keys for the load and rebuild them after (fresh loads only)",
    )
    parser.add_argument("--hour-facts", type=int, help="facts in the appended hour (default: the average rate)")
    args = parser.parse_args(argv)

    server = _server()
    target = server.with_database(args.database)
    if args.recreate:
        with psycopg.connect(server.with_database("postgres").url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(args.database)))
    migrate.upgrade(target)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    with psycopg.connect(target.url) as conn:
        if args.append_hour:
            row = conn.execute(
                "select extract(epoch from min(record_time)), extract(epoch from max(record_time)), count(*) "
                "from ingest.processed_record"
            ).fetchone()
            assert row and row[2], "nothing to append to: load the history first"
            first, last, count = float(row[0]), float(row[1]), int(row[2])
            rng = random.Random(args.seed + int(last))
            kinds = conn.execute(
                "select d.id, coalesce(bool_or(p.record_type_id = %s), d.id >= %s) "
                "from ingest.device d left join ingest.processed_record p "
                "on p.device_id = d.id and p.record_type_id in (%s, %s) group by d.id order by d.id",
                (TYPE_MM, PROVISIONED_ID_BASE, TYPE_TICKS, TYPE_MM),
            ).fetchall()
            devices = [Device(int(i), "new" if on_mm else "legacy", 0.0, rng.paretovariate(1.5)) for i, on_mm in kinds]
            hour_facts = args.hour_facts or max(1, round(count / ((last - first) / 3600)))
            ensure_days(conn, last + 1, last + 3600)
            load(conn, devices, hour_facts, last + 1, last + 3600, rng, ingest_now=time.time())
            print(f"appended {hour_facts:,} facts (one hour) to {args.database}")
        else:
            n_devices = preload(conn, args.facts, args.days, rng, args.devices, fast=args.fast)
            print(f"loaded {args.facts:,} facts for {n_devices:,} devices into {args.database}")
    print(f"took {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
