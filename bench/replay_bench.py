"""Replay benchmark: a replay's rows/s next to live batch ingest, measured in one run.

    python -m bench.replay_bench                 # 20,000 rows (a minute or two on a laptop)
    python -m bench.replay_bench --rows 1000000  # the issue's figure: 1 M error rows (long)

Against the server of DATABASE_URL (or the embedded one), in a fresh database of its own
(`iot_replay_bench`, dropped at the end): starts `iot-platform serve`, then

  live_rejected  POST /ingest, JSON arrays of --batch events of a type the catalog does not know:
                 --rows rows kept as `unknown_event_type` errors (the replay's input)
  live_facts     the same count of events of a known type: facts (the live write path's usual work)
  replay         the record type inserted, then the replay of every `unknown_event_type` row, in
                 batches of --replay-batch (one transaction each): rows/s

and checks the ledger: raw rows unchanged by the replay, every raw row one current outcome, and
--rows new facts. Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from ingest_service.core import migrate
from ingest_service.core.config import Settings
from ingest_service.core.database import resolve_target
from ingest_service.lifecycle import replay
from tests.utils.ledger import ledger
from tests.utils.processes import running_api

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DB_NAME = "iot_replay_bench"
SECRET = "replay-bench-provision-secret-of-32-bytes"
NEW_TYPE = "platform_tilt_deg"
DEVICES = 500
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def events(kind: str, start: int, count: int) -> list[dict[str, Any]]:
    event_type = NEW_TYPE if kind == "rejected" else "platform_height_mm"
    offset = 0.0 if kind == "rejected" else 0.5  # distinct events: no duplicates between the phases
    return [
        {"device_id": 1 + i % DEVICES, "event_type": event_type, "value": (i % 90) * 1.0, "timestamp": T0 + i + offset}
        for i in range(start, start + count)
    ]


def live(base: str, kind: str, rows: int, batch: int, clients: int) -> dict[str, Any]:
    """`rows` events POSTed in arrays of `batch` over `clients` keep-alive connections."""
    starts = list(range(0, rows, batch))
    lock = threading.Lock()
    failures: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            while True:
                with lock:
                    if not starts:
                        return
                    start = starts.pop()
                response = http.post("/ingest", json=events(kind, start, min(batch, rows - start)))
                if response.status_code not in (200, 207):
                    failures.append(f"{response.status_code}: {response.text[:200]}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"live ingest failed: {failures[:3]}")
    return {"rows": rows, "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="error rows to replay (default 20,000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per POST of live ingest")
    parser.add_argument("--clients", type=int, default=2, help="concurrent connections of live ingest")
    parser.add_argument("--replay-batch", type=int, default=replay.DEFAULT_BATCH_SIZE, help="rows per replay batch")
    args = parser.parse_args(argv)

    server = resolve_target(Settings(dev_mode=True)).with_database("postgres")
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DB_NAME)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(DB_NAME)))
    target = server.with_database(DB_NAME)
    results: dict[str, Any] = {}
    try:
        migrate.upgrade(target)
        with running_api(target, SECRET, RECORD_TYPE_REFRESH_SECONDS="0") as base:
            print(f"live ingest of {args.rows:,} rejected events ...", flush=True)
            results["live_rejected"] = live(base, "rejected", args.rows, args.batch, args.clients)
            print(f"live ingest of {args.rows:,} facts ...", flush=True)
            results["live_facts"] = live(base, "facts", args.rows, args.batch, args.clients)
        with psycopg.connect(target.url, autocommit=True) as conn:
            conn.execute(
                "insert into ingest.record_type (id, name, unit, min_value, max_value, payload_format, measure)"
                " values (50, %s, 'deg', -90, 90, 'common', 'tilt')",
                (NEW_TYPE,),
            )
            before = ledger(conn)
            t0 = time.perf_counter()
            result = replay.run(
                target.url,
                Settings(dev_mode=True),
                replay.Selection(reasons=("unknown_event_type",)),
                requested_by="bench",
                batch_size=args.replay_batch,
                out=lambda line: print(line, flush=True) if "/" in line else None,
            )
            elapsed = time.perf_counter() - t0
            after = ledger(conn)
        counts = result.tally.counts()
        results["replay"] = {
            "rows": counts["selected"],
            "seconds": round(elapsed, 2),
            "rows_per_s": round(counts["selected"] / elapsed),
            "facts": counts["facts"],
        }
        assert after.raw_rows == before.raw_rows, "the replay wrote the ledger"
        assert after.balanced, after.as_dict()
        assert counts["facts"] == after.facts - before.facts == args.rows, (counts, before, after)
    finally:
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(DB_NAME)))

    print(f"\n{'phase':<16}{'rows':>12}{'seconds':>10}{'rows/s':>10}")
    for phase, figures in results.items():
        print(f"{phase:<16}{figures['rows']:>12,}{figures['seconds']:>10}{figures['rows_per_s']:>10,}")
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"replay-{stamp}.json"
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    out.write_text(json.dumps({"args": vars(args), "machine": machine, "results": results}, indent=2))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
