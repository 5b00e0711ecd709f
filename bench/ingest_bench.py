"""Ingest benchmark: the API's throughput side by side with its two ceilings, measured in one run.

    make bench                                  # = python -m bench.ingest_bench
    python -m bench.ingest_bench --quick        # one short repetition of everything
    python -m bench.ingest_bench --soak 600     # 10 minutes of full load: the API's memory over time
    python -m bench.ingest_bench --history 10000000   # then batches of 1,000 again with 10 M facts stored

It starts its own PostgreSQL (a pgserver data folder under .data/bench-pg, never the dev data; or
--server-url), creates fresh migrated databases, starts `iot-platform serve` and a no-op server of
the same stack on free ports, then per repetition measures:

  copy        the COPY ceiling: ledger rows (JSON payload) + fact rows COPYed straight into the same
              schema, batches of 1,000, one transaction per batch (events/s)
  batch100    POST /ingest with JSON arrays of 100 events, --clients keep-alive connections
  batch1000   the same with 1,000 events
  noop        the HTTP ceiling: wrk, one event per POST, --connections, against the no-op server
  single      the same wrk run against the API: every request a new fact

with the CPU of each process (API, PostgreSQL, load generator) and the API's RSS; verifies with
SQL counts that nothing was lost or duplicated; prints the medians and writes JSON to bench/results/.

With --history N, after the repetitions it COPYs N facts and their ledger rows spread over the last
30 days into the API's database (scripts/bulk_load_facts.py, into their day partitions), then
measures batches of 1,000 again against the same API: the rate with that history stored, as a
ratio to the empty database's rate of the same run (issue 15: at least 80 % at 10 M).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import psycopg
from psycopg import sql

from bench.batch_client import make_body
from ingest_service.core import migrate
from ingest_service.core.config import PROJECT_ROOT
from ingest_service.core.database import DatabaseTarget
from platform_cli import processes
from platform_cli.services import default_workers
from tests.utils.ledger import ledger

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
API_DB, COPY_DB = "iot_bench", "iot_bench_copy"
SCENARIOS = ("copy", "batch100", "batch1000", "noop", "single")
DEVICES = 500
WRK_INSTALL = "wrk is not on PATH: install it with `sudo apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk`"


# --------------------------------------------------------------------------------------------- #
# processes and their CPU
# --------------------------------------------------------------------------------------------- #


class ProcGroup:
    """A process and all its descendants (uvicorn workers, PostgreSQL backends)."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.root = psutil.Process(pid)
        self._known: dict[int, psutil.Process] = {}

    def processes(self) -> list[psutil.Process]:
        try:
            found = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        # Keep the psutil objects: cpu_percent-free cumulative times per pid.
        out = []
        for proc in found:
            known = self._known.setdefault(proc.pid, proc)
            out.append(known)
        return out

    def cpu(self) -> dict[int, float]:
        times = {}
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                times[proc.pid] = t.user + t.system
        return times

    def rss_mb(self) -> float:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**20


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def one_row(cursor: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The one row of a query that always returns one (an aggregate, `show`)."""
    row = cursor.fetchone()
    assert row is not None, "query returned no row"
    return row


class CpuMeter:
    """CPU seconds of each group, the load generator (reaped children) and this process, over a phase,
    as a share of one core (100 % = one core fully busy)."""

    def __init__(self, groups: list[ProcGroup]) -> None:
        self.groups = groups

    def start(self) -> dict[str, Any]:
        return {
            "wall": time.perf_counter(),
            "groups": {g.name: g.cpu() for g in self.groups},
            "children": resource.getrusage(resource.RUSAGE_CHILDREN),
            "self": resource.getrusage(resource.RUSAGE_SELF),
            "machine": _machine_busy(),
        }

    def stop(self, start: dict[str, Any]) -> dict[str, float]:
        wall = time.perf_counter() - start["wall"]
        out: dict[str, float] = {}
        for group in self.groups:
            before = start["groups"][group.name]
            now = group.cpu()
            out[group.name] = sum(v - before.get(pid, 0.0) for pid, v in now.items()) / wall * 100
        c0, c1 = start["children"], resource.getrusage(resource.RUSAGE_CHILDREN)
        out["loadgen"] = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / wall * 100
        s0, s1 = start["self"], resource.getrusage(resource.RUSAGE_SELF)
        out["bench"] = (s1.ru_utime + s1.ru_stime - s0.ru_utime - s0.ru_stime) / wall * 100
        out["machine"] = (_machine_busy() - start["machine"]) / wall * 100
        return {k: round(v, 1) for k, v in out.items()}


class RssSampler(threading.Thread):
    """The API's resident memory (all its processes) every `interval` seconds."""

    def __init__(self, group: ProcGroup, interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.group, self.interval = group, interval
        self.samples: list[tuple[float, float]] = []
        self.started = time.monotonic()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.monotonic() - self.started, 1), round(self.group.rss_mb(), 1)))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def max_since(self, t0: float) -> float:
        values = [rss for t, rss in self.samples if t >= t0]
        return max(values) if values else 0.0

    def now(self) -> float:
        return time.monotonic() - self.started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    processes.wait_ready(url, timeout, process=proc)


def stop_process(proc: subprocess.Popen) -> None:
    processes.stop([proc], grace=30)


# --------------------------------------------------------------------------------------------- #
# the database
# --------------------------------------------------------------------------------------------- #


class BenchDatabase:
    """A PostgreSQL server for the benchmark alone: pgserver under .data/bench-pg, or --server-url."""

    def __init__(self, server_url: str | None, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.embedded = server_url is None
        if server_url:
            self.server = DatabaseTarget(server_url, embedded=False).with_database("postgres")
            self.postmaster_pid: int | None = None
        else:
            import pgserver

            data_dir.parent.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(data_dir, cleanup_mode=None)
            info = server.get_postmaster_info()
            url = "postgresql://postgres@/postgres?" + urlencode({"host": str(info.socket_dir)})
            self.server = DatabaseTarget(url, embedded=True)
            self.postmaster_pid = info.pid

    def fresh(self, name: str) -> DatabaseTarget:
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        target = self.server.with_database(name)
        migrate.upgrade(target)
        return target

    def settings(self) -> dict[str, str]:
        names = ("server_version", "shared_buffers", "synchronous_commit", "fsync", "wal_sync_method", "max_wal_size")
        with psycopg.connect(self.server.url) as conn:
            return {n: one_row(conn.execute(sql.SQL("show {}").format(sql.Identifier(n))))[0] for n in names}

    def stop(self) -> None:
        if self.embedded:
            from pgserver import pg_ctl

            user = "pgserver" if os.geteuid() == 0 else None
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user)


# --------------------------------------------------------------------------------------------- #
# scenarios
# --------------------------------------------------------------------------------------------- #

TYPE_IDS = {b"platform_extension_ticks": 1, b"platform_extension_mm": 2, b"battery_charge": 3, b"platform_height_mm": 4}


def copy_batches(first_raw_id: int, base: float, batches: int, size: int = 1000) -> list[tuple[bytes, bytes]]:
    """COPY text for `batches` batches: ledger rows with the JSON payload the API stores, and their facts."""
    from bench.batch_client import TYPES

    out = []
    raw_id = first_raw_id
    utc = dt.UTC
    for b in range(batches):
        raw_lines, fact_lines = [], []
        for i in range(size):
            seq = b * size + i
            name, low, high = TYPES[seq % 4]
            value = low + seq % (high - low + 1)
            device = 1 + seq % DEVICES
            ts = base + seq * 0.00001
            payload = b'{"device_id":%d,"event_type":"%s","value":%d,"timestamp":%.5f}' % (device, name, value, ts)
            raw_lines.append(b"%d\tcopy-%d\t%d\tapplication/json\t%s\n" % (raw_id, b, i, payload))
            stamp = dt.datetime.fromtimestamp(ts, utc).isoformat().encode()
            fact_lines.append(b"%d\t%d\t%d\t%s\t%d\n" % (raw_id, device, TYPE_IDS[name], stamp, value))
            raw_id += 1
        out.append((b"".join(raw_lines), b"".join(fact_lines)))
    return out


def run_copy(target: DatabaseTarget, state: TimeCursor, batches: int, meter: CpuMeter) -> dict[str, Any]:
    data = copy_batches(state["copy_next_id"], state.pop_base(), batches)
    state["copy_next_id"] += batches * 1000
    with psycopg.connect(target.url) as conn:
        if not state.get("copy_devices"):
            conn.execute(
                "insert into ingest.device (id, origin) select g, 'legacy' from generate_series(1, %s) g "
                "on conflict do nothing",
                (DEVICES,),
            )
            conn.commit()
            state["copy_devices"] = True
        cpu0 = meter.start()
        started = time.perf_counter()
        for raw, facts in data:
            with conn.transaction():
                cur = conn.cursor()
                with cur.copy(
                    "copy ingest.raw_record (id, request_id, batch_index, content_type, payload) from stdin"
                ) as copy:
                    copy.write(raw)
                with cur.copy(
                    "copy ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value)"
                    " from stdin"
                ) as copy:
                    copy.write(facts)
        elapsed = time.perf_counter() - started
        cpu = meter.stop(cpu0)
    cpu["loadgen"] = cpu.pop("bench")  # the COPY client is this process
    events = batches * 1000
    state["copy_rows"] += events
    return {"events": events, "elapsed": elapsed, "events_per_s": events / elapsed, "cpu": cpu}


class TimeCursor(dict):
    """Benchmark state; hands out disjoint timestamp ranges so every event of the run is unique."""

    def __init__(self) -> None:
        super().__init__(copy_next_id=1, copy_rows=0, expected_items=0, wrk_slack=0, cursor=time.time() - 2 * 86400)

    def pop_base(self) -> float:
        base = self["cursor"]
        self["cursor"] += 300.0  # room for 3e7 events at 10 us apart
        return base


def run_batch(
    port: int, batch: int, clients: int, duration: float, state: TimeCursor, meter: CpuMeter, expect: int = 200
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.batch_client",
        "--port",
        str(port),
        "--batch",
        str(batch),
        "--clients",
        str(clients),
        "--duration",
        str(duration),
        "--base",
        repr(state.pop_base()),
        "--devices",
        str(DEVICES),
        "--expect",
        str(expect),
    ]
    cpu0 = meter.start()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
    cpu = meter.stop(cpu0)
    if out.returncode != 0:
        raise RuntimeError(f"batch client failed: {out.stderr[-2000:]}")
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    state["expected_items"] += stats["items"]
    stats["cpu"] = cpu
    return stats


def run_wrk(
    port: int, connections: int, threads: int, duration: float, state: TimeCursor, meter: CpuMeter, counted: bool
) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit(WRK_INSTALL)
    cmd = [
        wrk,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration:g}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH_DIR / "single_event.lua"),
        f"http://127.0.0.1:{port}/ingest",
        "--",
        repr(state.pop_base()),
        str(threads),
        str(DEVICES),
    ]
    cpu0 = meter.start()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cpu = meter.stop(cpu0)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-1000:]} {out.stderr[-1000:]}")
    w = json.loads(line.removeprefix("WRKJSON "))
    seconds = w["duration_us"] / 1e6
    errors = sum(v for k, v in w.items() if k.startswith("errors_"))
    if counted:
        # Every answered request stored one item; requests still in flight when wrk stops may
        # be stored too (at most one per connection), and are answered to nobody.
        state["expected_items"] += w["requests"] - w["errors_status"]
        state["wrk_slack"] += connections + w["errors_timeout"] + w["errors_read"]
    return {
        "requests": w["requests"],
        "requests_per_s": w["requests"] / seconds,
        "events_per_s": w["requests"] / seconds,
        "errors": errors,
        "errors_detail": {k: v for k, v in w.items() if k.startswith("errors_")},
        "p50_ms": w["p50_us"] / 1000,
        "p95_ms": w["p95_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "elapsed": seconds,
        "cpu": cpu,
    }


# --------------------------------------------------------------------------------------------- #
# verification
# --------------------------------------------------------------------------------------------- #

DISTINCT_FACTS = """
select count(*) from (select distinct device_id, record_type_id, record_time, value from ingest.processed_record) d
"""


def replay_first_batch(port: int, state: TimeCursor) -> dict[str, Any]:
    """Idempotency under the benchmark: re-send a batch the run already stored; all must be duplicates."""
    base = state["replay_base"]
    body = make_body(range(0, 1000), base, DEVICES)
    answer = httpx.post(
        f"http://127.0.0.1:{port}/ingest", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    statuses = [item["status"] for item in answer.json()]
    state["expected_items"] += len(statuses)
    return {"sent": 1000, "duplicate_answers": statuses.count("duplicate")}


def verify(target: DatabaseTarget, state: TimeCursor, replay: dict[str, Any] | None) -> dict[str, Any]:
    with psycopg.connect(target.url) as conn:
        counts = ledger(conn)
        (distinct,) = one_row(conn.execute(DISTINCT_FACTS))
    raw, facts, dups, startups, errors = (
        counts.raw_rows, counts.facts, counts.duplicates, counts.startups, counts.errors
    )  # fmt: skip
    expected, slack = state["expected_items"], state["wrk_slack"]
    replayed = replay["sent"] if replay else 0
    checks = {
        "raw rows >= answered items": raw >= expected,
        "raw rows <= answered items + in flight at wrk stop": raw <= expected + slack,
        "facts == distinct events": facts == distinct,
        "facts == raw rows - replayed": facts == raw - replayed,
        "duplicates == replayed": dups == replayed and (replay is None or replay["duplicate_answers"] == replayed),
        "no errors, no startups": errors == 0 and startups == 0,
        "each raw row exactly one outcome": counts.balanced,
    }
    return {
        "raw_rows": raw,
        "facts": facts,
        "distinct_facts": distinct,
        "duplicates": dups,
        "errors": errors,
        "startups": startups,
        "raw_without_outcome": counts.without_outcome,
        "raw_with_several_outcomes": counts.several_outcomes,
        "answered_items": expected,
        "in_flight_allowance": slack,
        "copy_rows": state["copy_rows"],
        "checks": checks,
        "ok": all(checks.values()),
    }


# --------------------------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------------------------- #


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs) if runs else float("nan")


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        if not runs:
            continue
        s: dict[str, Any] = {"reps": len(runs), "events_per_s": median_of(runs, "events_per_s")}
        for key in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms"):
            if key in runs[0]:
                s[key] = median_of(runs, key)
        s["cpu"] = {k: statistics.median(r["cpu"][k] for r in runs) for k in runs[0]["cpu"]}
        if "rss_max_mb" in runs[0]:
            s["rss_max_mb"] = max(r["rss_max_mb"] for r in runs)
        out[name] = s
    copy_rate = out.get("copy", {}).get("events_per_s")
    noop_rate = out.get("noop", {}).get("requests_per_s")
    for name, s in out.items():
        if copy_rate and name != "copy":
            s["ratio_to_copy"] = s["events_per_s"] / copy_rate
        if noop_rate and name not in ("copy", "noop"):
            s["ratio_to_http"] = s["events_per_s"] / noop_rate
    return out


def _other(cpu: dict[str, float]) -> float:
    return max(0.0, cpu.get("machine", 0) - sum(v for k, v in cpu.items() if k != "machine"))


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return format("-", re.match(r"[<>^]?\d*", spec).group())  # type: ignore[union-attr]
    return format(value, spec)


def _us_per_event(cpu_share: float | None, events_per_s: float) -> float | None:
    """CPU microseconds per event of one process group: robust to other load on the machine."""
    return None if cpu_share is None or not events_per_s else cpu_share / 100 / events_per_s * 1e6


def print_table(summary: dict[str, dict[str, Any]], targets: dict[str, Any]) -> None:
    head = (
        f"{'scenario':<10} {'events/s':>9} {'req/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'/COPY':>6} {'/HTTP':>6} {'API%':>5} {'PG%':>5} {'load%':>5} {'box%':>5} {'other':>5} {'RSS MB':>6} "
        f"{'API us/ev':>9} {'PG us/ev':>8}"
    )
    print(head)
    print("-" * len(head))
    for name in SCENARIOS:
        s = summary.get(name)
        if not s:
            continue
        cpu = s["cpu"]
        print(
            f"{name:<10} {s['events_per_s']:>9,.0f} {_fmt(s.get('requests_per_s'), '>8,.0f')} "
            f"{_fmt(s.get('p50_ms'), '>7.1f')} {_fmt(s.get('p95_ms'), '>7.1f')} {_fmt(s.get('p99_ms'), '>7.1f')} "
            f"{_fmt(s.get('ratio_to_copy'), '>6.1%')} {_fmt(s.get('ratio_to_http'), '>6.1%')} "
            f"{cpu.get('api', 0):>5.0f} {cpu.get('postgres', 0):>5.0f} {cpu.get('loadgen', 0):>5.0f} "
            f"{cpu.get('machine', 0):>5.0f} {_other(cpu):>5.0f} {_fmt(s.get('rss_max_mb'), '>6.0f')} "
            f"{_fmt(_us_per_event(cpu.get('api'), s['events_per_s']), '>9.1f')} "
            f"{_fmt(_us_per_event(cpu.get('postgres'), s['events_per_s']), '>8.1f')}"
        )
    print(
        f"CPU columns: % of one core (this machine has {psutil.cpu_count()}); box = the whole machine, "
        "other = box minus API, PostgreSQL, load generator and this script (other tenants of the machine)."
    )
    for text, ok in targets.items():
        print(f"  [{'ok' if ok else 'MISS'}] {text}")


def targets_of(summary: dict[str, dict[str, Any]]) -> dict[str, bool]:
    out = {}
    if "batch1000" in summary and "copy" in summary:
        out["batches of 1,000 >= 35% of the COPY ceiling"] = summary["batch1000"]["ratio_to_copy"] >= 0.35
    if "single" in summary and "noop" in summary:
        out["single events at c64 >= 50% of the HTTP ceiling"] = summary["single"]["ratio_to_http"] >= 0.5
        out["single events p99 < 50 ms"] = summary["single"]["p99_ms"] < 50
    return out


# --------------------------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------------------------- #


@contextlib.contextmanager
def servers(args: argparse.Namespace, api_db: DatabaseTarget, need_noop: bool) -> Iterator[dict[str, Any]]:
    env = dict(os.environ, DATABASE_URL=api_db.url, DEV_MODE="1", LOG_LEVEL="WARNING")
    for item in args.set:
        key, _, value = item.partition("=")
        env[key.upper()] = value
    api_port, noop_port = free_port(), free_port()
    started = []
    try:
        serve = [str(VENV_BIN / "iot-platform"), "serve", "--port", str(api_port), "--no-migrate"]
        if args.workers:
            serve += ["--workers", str(args.workers)]
        api = subprocess.Popen(serve, env=env, cwd=PROJECT_ROOT, start_new_session=True)
        started.append(api)
        wait_ready(f"http://127.0.0.1:{api_port}/readyz", api)
        noop = None
        if need_noop:
            cmd = [sys.executable, "-m", "bench.noop_app", "--port", str(noop_port)]
            cmd += ["--workers", str(args.workers or default_workers())]  # as many as the API's
            noop = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, start_new_session=True)
            started.append(noop)
            wait_ready(f"http://127.0.0.1:{noop_port}/readyz", noop)
        yield {"api": api, "api_port": api_port, "noop": noop, "noop_port": noop_port}
    finally:
        for proc in started:
            stop_process(proc)


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": shutil.which("wrk"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP measurement (default 10)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; the table shows medians (default 3)")
    p.add_argument("--quick", action="store_true", help="one repetition of 4 s each")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--workers", type=int, default=None, help="API (and no-op) uvicorn workers (default: serve's)")
    p.add_argument("--clients", type=int, default=4, help="concurrent connections of the batch client (default 4)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections for single events (default 64)")
    # One wrk thread per core: a single thread answers a burst of responses one connection after the
    # other, and the API then waits on the client (docs/performance.md, "The load generator").
    p.add_argument(
        "--wrk-threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="wrk threads (default: 2, or 1 on one core)",
    )
    p.add_argument("--copy-batches", type=int, default=300, help="batches of 1,000 per COPY measurement")
    p.add_argument("--soak", type=float, default=0.0, help="instead: SECONDS of full load, tracking the API's RSS")
    p.add_argument("--profile", choices=SCENARIOS[1:], default=None, help="py-spy the API during this scenario")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="API setting (env), repeatable")
    p.add_argument("--server-url", default=None, help="a PostgreSQL server to use instead of the embedded one")
    p.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / ".data" / "bench-pg")
    p.add_argument("--keep-server", action="store_true", help="leave the benchmark's PostgreSQL running")
    p.add_argument("--out", type=Path, default=None, help="JSON result path (default bench/results/<time>.json)")
    p.add_argument(
        "--history",
        type=int,
        default=0,
        help="then preload this many facts (with ledger rows) and measure batches of 1,000 again (default 0: no)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.reps, args.copy_batches = 4.0, 1, 100
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needs_wrk = args.soak or {"noop", "single"} & set(args.scenarios)
    if needs_wrk and shutil.which("wrk") is None:
        print(WRK_INSTALL, file=sys.stderr)
        return 2
    print(f"starting the benchmark's PostgreSQL ({args.server_url or args.data_dir}) ...", flush=True)
    db = BenchDatabase(args.server_url, args.data_dir)
    try:
        return _run(args, db)
    finally:
        if not args.keep_server:
            db.stop()


def _run(args: argparse.Namespace, db: BenchDatabase) -> int:
    api_db = db.fresh(API_DB)
    copy_db = db.fresh(COPY_DB) if "copy" in args.scenarios and not args.soak else None
    state = TimeCursor()
    need_noop = "noop" in args.scenarios and not args.soak
    report: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.ingest_bench", *(argv_or_sys())]),
        "machine": machine_info(),
        "postgres": db.settings(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with servers(args, api_db, need_noop) as srv:
        groups = [ProcGroup("api", srv["api"].pid)]
        if db.postmaster_pid:
            groups.append(ProcGroup("postgres", db.postmaster_pid))
        meter = CpuMeter(groups)
        # Without the no-op server (its scenario not asked for) nothing reads this meter.
        noop_meter = CpuMeter([ProcGroup("api", srv["noop"].pid)] + groups[1:] if srv["noop"] else [])
        sampler = RssSampler(groups[0], interval=2.0 if args.soak else 1.0)
        sampler.start()
        port = srv["api_port"]

        # Warm-up (counted in the verification like everything else); its first batch is replayed at the end.
        print("warming up ...", flush=True)
        state["replay_base"] = state["cursor"]
        run_batch(port, 1000, 2, 2.0, state, meter)
        if "single" in args.scenarios or args.soak:
            run_wrk(port, args.connections, args.wrk_threads, 2.0, state, meter, counted=True)
        if need_noop:
            run_wrk(srv["noop_port"], args.connections, args.wrk_threads, 2.0, state, noop_meter, counted=False)
        report["rss_after_warmup_mb"] = round(groups[0].rss_mb(), 1)

        if args.soak:
            report["soak"] = soak(args, port, state, meter, sampler)
            results: dict[str, list[dict[str, Any]]] = {}
        else:
            results = {name: [] for name in args.scenarios}
            steps: dict[str, Callable[[], dict[str, Any]]] = {
                "copy": lambda: run_copy(copy_db, state, args.copy_batches, meter),  # type: ignore[arg-type]
                "batch100": lambda: run_batch(port, 100, args.clients, args.duration, state, meter),
                "batch1000": lambda: run_batch(port, 1000, args.clients, args.duration, state, meter),
                "noop": lambda: run_wrk(
                    srv["noop_port"], args.connections, args.wrk_threads, args.duration, state, noop_meter, False
                ),
                "single": lambda: run_wrk(
                    port, args.connections, args.wrk_threads, args.duration, state, meter, counted=True
                ),
            }
            for rep in range(args.reps):
                for name in args.scenarios:
                    t0 = sampler.now()
                    spy = start_profile(args, name, srv) if rep == 0 and name == args.profile else None
                    result = steps[name]()
                    if spy is not None:
                        report["profile"] = finish_profile(*spy)
                    if name != "noop" and name != "copy":
                        result["rss_max_mb"] = sampler.max_since(t0)
                    results[name].append(result)
                    print(
                        f"rep {rep + 1}/{args.reps} {name:<10} {result['events_per_s']:>10,.0f} events/s"
                        + (f"  p99 {result['p99_ms']:.1f} ms" if "p99_ms" in result else "")
                        + f"  cpu {result['cpu']}",
                        flush=True,
                    )
            if args.history:
                report["history"] = with_history(args, api_db, port, state, meter, results.get("batch1000", []))
        replay = replay_first_batch(port, state)
        time.sleep(0.5)
        sampler.stop()
        report["rss_samples"] = sampler.samples
    report["verification"] = verify(api_db, state, replay)
    report["runs"] = results
    summary = summarize(results)
    report["summary"] = summary
    targets = targets_of(summary)
    report["targets"] = targets

    print()
    if summary:
        print_table(summary, targets)
    if args.soak:
        s = report["soak"]
        print(
            f"soak {args.soak:.0f} s: {s['events']:,} events ({s['events_per_s']:,.0f}/s), API RSS "
            f"{s['rss_first_mb']:.0f} -> {s['rss_last_mb']:.0f} MB (max {s['rss_max_mb']:.0f} MB, "
            f"{s['rss_growth_mb_per_million_events']:+.2f} MB per million events)"
        )
    if "history" in report:
        h = report["history"]
        print(
            f"history: batches of 1,000 with {h['facts']:,} facts stored {h['events_per_s']:,.0f} events/s, "
            f"empty {h['empty_events_per_s']:,.0f} events/s: {h['ratio']:.0%} (target >= 80 %); PostgreSQL CPU "
            f"per event {h['empty_postgres_us_per_event']:.1f} -> {h['postgres_us_per_event']:.1f} us, API "
            f"{h['empty_api_us_per_event']:.1f} -> {h['api_us_per_event']:.1f} us"
        )
    v = report["verification"]
    print(
        f"verification: raw {v['raw_rows']:,} (answered {v['answered_items']:,}, in-flight allowance "
        f"{v['in_flight_allowance']}), facts {v['facts']:,}, duplicates {v['duplicates']:,} (replayed batch), "
        f"errors {v['errors']}, rows without/with several outcomes {v['raw_without_outcome']}/"
        f"{v['raw_with_several_outcomes']} -> {'OK' if v['ok'] else 'FAILED'}"
    )
    for check, ok in v["checks"].items():
        if not ok:
            print(f"  FAILED: {check}")
    out = args.out or RESULTS_DIR / f"ingest-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"results: {out}")
    return 0 if v["ok"] else 1


def with_history(
    args: argparse.Namespace,
    target: DatabaseTarget,
    port: int,
    state: TimeCursor,
    meter: CpuMeter,
    empty_runs: list[dict[str, Any]],
) -> dict[str, Any]:
    """Preload `args.history` facts, then batches of 1,000 again: the rate as a ratio to the empty one."""
    import random

    from scripts import bulk_load_facts as bulk

    print(f"preloading {args.history:,} facts of history ...", flush=True)
    started = time.perf_counter()
    with psycopg.connect(target.url) as conn:
        bulk.preload(conn, args.history, 30.0, random.Random(42))
    load_s = time.perf_counter() - started
    state["expected_items"] += args.history  # ledger rows with their facts: counted by the verification
    runs = []
    for rep in range(args.reps):
        result = run_batch(port, 1000, args.clients, args.duration, state, meter)
        runs.append(result)
        print(f"rep {rep + 1}/{args.reps} batch1000 with history {result['events_per_s']:>10,.0f} events/s", flush=True)
    if not empty_runs:  # batch1000 was not among the scenarios: measure nothing to compare with
        raise SystemExit("--history needs the batch1000 scenario (its empty-database rate)")
    empty = median_of(empty_runs, "events_per_s")
    rate = median_of(runs, "events_per_s")

    def us_per_event(group: str, of: list[dict[str, Any]]) -> float:
        # CPU per event: what history costs the database, apart from the machine's other tenants.
        return statistics.median(_us_per_event(r["cpu"].get(group), r["events_per_s"]) or 0.0 for r in of)

    return {
        "facts": args.history,
        "load_s": round(load_s, 1),
        "runs": runs,
        "events_per_s": rate,
        "empty_events_per_s": empty,
        "ratio": rate / empty,
        "postgres_us_per_event": us_per_event("postgres", runs),
        "empty_postgres_us_per_event": us_per_event("postgres", empty_runs),
        "api_us_per_event": us_per_event("api", runs),
        "empty_api_us_per_event": us_per_event("api", empty_runs),
    }


def start_profile(args: argparse.Namespace, name: str, srv: dict[str, Any]) -> tuple[subprocess.Popen, Path]:
    spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("--profile needs py-spy: `uv pip install py-spy` into the venv (not a project dependency)")
    pid = (srv["noop"] if name == "noop" else srv["api"]).pid
    out = RESULTS_DIR / f"profile-{name}-{dt.datetime.now():%Y%m%d-%H%M%S}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        spy,
        "record",
        "-p",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        "200",
        "--format",
        "raw",
        "--function",
    ]
    cmd += ["--output", str(out), "--duration", str(int(args.duration))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def finish_profile(proc: subprocess.Popen, out: Path) -> dict[str, Any]:
    proc.wait(60)
    summary = summarize_profile(out)
    print(f"profile: {out}")
    print(f"  {'self %':>6} {'total %':>7}  function")
    for row in summary["top"]:
        print(f"  {row['self']:>6.1f} {row['total']:>7.1f}  {row['frame']}")
    return summary


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Collapsed stacks -> per-function self and inclusive shares of the samples (idle waits left out)."""
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r" \((?:.*/)?(site-packages/|ingest_service/|bench/)?", " (\\1", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames or frames[-1].startswith("Condition.wait"):  # an idle thread-pool worker, not work
            continue
        samples += n
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + n
        for frame in set(frames):
            total_counts[frame] = total_counts.get(frame, 0) + n
    ranked = sorted(total_counts, key=lambda f: (-self_counts.get(f, 0), -total_counts[f]))[:top]
    samples = max(samples, 1)
    rows = [
        {"frame": f, "self": 100 * self_counts.get(f, 0) / samples, "total": 100 * total_counts[f] / samples}
        for f in ranked
    ]
    by_total = sorted(total_counts, key=lambda f: -total_counts[f])[: top * 2]
    return {
        "file": str(path),
        "samples": samples,
        "top": rows,
        "top_inclusive": [{"frame": f, "total": 100 * total_counts[f] / samples} for f in by_total],
    }


def argv_or_sys() -> list[str]:
    return sys.argv[1:]


def soak(args: argparse.Namespace, port: int, state: TimeCursor, meter: CpuMeter, sampler: RssSampler) -> dict:
    """Full load for args.soak seconds: two batch-of-1,000 clients and wrk single events together."""
    print(f"soak: {args.soak:.0f} s of batches of 1,000 (2 clients) + single events (wrk c32) ...", flush=True)
    t0 = sampler.now()
    cpu0 = meter.start()
    results: dict[str, Any] = {}

    def batches() -> None:
        results["batch"] = run_batch(port, 1000, 2, args.soak, state, meter)

    thread = threading.Thread(target=batches)
    thread.start()
    results["single"] = run_wrk(port, 32, 1, args.soak, state, meter, counted=True)
    thread.join()
    cpu = meter.stop(cpu0)
    samples = [(t - t0, rss) for t, rss in sampler.samples if t >= t0]
    events = results["batch"]["items"] + results["single"]["requests"]
    tenth = max(1, len(samples) // 10)
    first = statistics.median(r for _, r in samples[tenth : 2 * tenth])  # after the first tenth (warm caches)
    last = statistics.median(r for _, r in samples[-tenth:])
    growth_per_million = (last - first) / max(events * 0.8 / 1e6, 1e-9)
    return {
        "seconds": args.soak,
        "events": events,
        "events_per_s": events / args.soak,
        "batch": results["batch"],
        "single": results["single"],
        "cpu": cpu,
        "rss_first_mb": first,
        "rss_last_mb": last,
        "rss_max_mb": max(r for _, r in samples),
        "rss_growth_mb_per_million_events": growth_per_million,
        "rss_under_300mb": max(r for _, r in samples) < 300,
    }


if __name__ == "__main__":
    sys.exit(main())
