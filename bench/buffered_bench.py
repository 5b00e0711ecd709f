"""Buffered-mode benchmark: 202 throughput and latency next to direct mode and the ceilings, and how
long writers take to drain a backlog, all in one run.

    make bench-buffered                           # = python -m bench.buffered_bench
    python -m bench.buffered_bench --quick        # one short repetition, a 200k-event backlog
    python -m bench.buffered_bench --drain-events 1000000 --writers 2

It starts its own PostgreSQL (as `make bench`: .data/bench-pg) and its own nats-server with
JetStream (file storage under .data/bench-nats, a free port), then per repetition measures:

  copy           the COPY ceiling (as `make bench`)
  batch1000      direct mode: POST /ingest, arrays of 1,000 events, 200 after commit
  single         direct mode: wrk, one event per POST
  noop           the HTTP ceiling: the API's own stack answering a no-op POST
  js1000         the JetStream ceiling: the same 1,000-event bodies published straight to a stream
                 of the same settings (nats-py, 64 publishes in flight), no HTTP
  js1            the same with one-event bodies
  buf_batch1000  buffered mode: POST /ingest, arrays of 1,000 events, 202 after the stream's ack
  buf_single     buffered mode: wrk, one event per POST

No writer runs while the 202 scenarios are measured: their requests become the backlog. The backlog
is then topped up with batches of 1,000 to --drain-events, --writers `iot-platform writer`
processes start, and the drain is timed until the consumer's lag is 0. Verified with SQL: every
accepted event is one ledger row with one outcome, no request stored twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import psycopg

from bench.batch_client import make_body
from bench.ingest_bench import (
    API_DB,
    COPY_DB,
    DEVICES,
    RESULTS_DIR,
    VENV_BIN,
    WRK_INSTALL,
    BenchDatabase,
    CpuMeter,
    ProcGroup,
    TimeCursor,
    free_port,
    machine_info,
    one_row,
    run_batch,
    run_copy,
    run_wrk,
    stop_process,
    wait_ready,
)
from ingest_service.buffer.stream import ensure_stream
from ingest_service.core.config import PROJECT_ROOT, Settings
from ingest_service.core.database import DatabaseTarget
from platform_cli.services import default_workers

BUFFERED_DB = "iot_bench_buffered"
SCENARIOS = ("copy", "batch1000", "single", "noop", "js1000", "js1", "buf_batch1000", "buf_single")
STREAM = "BENCH"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def buffer_settings(nats_url: str) -> dict[str, str]:
    return {
        "INGEST_BUFFER": "jetstream",
        "NATS_URL": nats_url,
        "INGEST_BUFFER_STREAM": STREAM,
        "INGEST_BUFFER_SUBJECT_PREFIX": "bench",
        "INGEST_BUFFER_MAX_BYTES": str(2 * 1024**3),  # reserved on the server per stream, dead letters too
    }


# --------------------------------------------------------------------------------------------- #
# the JetStream ceiling
# --------------------------------------------------------------------------------------------- #


async def _publish_for(nats_url: str, body: bytes, in_flight: int, duration: float) -> dict[str, Any]:
    overrides: dict[str, Any] = {k.lower(): v for k, v in buffer_settings(nats_url).items()}
    settings = Settings(dev_mode=True, **overrides)
    settings = settings.model_copy(update={"ingest_buffer_stream": "CEILING", "ingest_buffer_subject_prefix": "ceil"})
    nc = await nats.connect(nats_url)
    js = nc.jetstream(timeout=10)
    names = await ensure_stream(js, settings)
    latencies: list[float] = []
    deadline = time.monotonic() + duration
    counter = iter(range(10**12))

    async def publisher() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await js.publish(names.request_subject("1"), body, headers={"Nats-Msg-Id": f"c{next(counter)}"})
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    await js.delete_stream(names.stream)
    await js.delete_stream(names.dead_stream)
    await nc.close()
    latencies.sort()
    return {"requests": len(latencies), "elapsed": elapsed, "latencies": latencies}


def run_publish_ceiling(nats_url: str, items: int, duration: float, meter: CpuMeter) -> dict[str, Any]:
    body = make_body(range(items), time.time() - 86400, DEVICES)
    if items == 1:
        body = body[1:-1]  # one event, not an array of one
    cpu0 = meter.start()
    out = asyncio.run(_publish_for(nats_url, body, 64, duration))
    cpu = meter.stop(cpu0)
    cpu["loadgen"] = cpu.pop("bench")  # the publisher is this process
    lat = out["latencies"]
    rate = out["requests"] / out["elapsed"]
    return {
        "requests": out["requests"],
        "requests_per_s": rate,
        "events_per_s": rate * items,
        "p50_ms": statistics.median(lat) * 1000,
        "p95_ms": lat[int(len(lat) * 0.95)] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "cpu": cpu,
    }


# --------------------------------------------------------------------------------------------- #
# processes
# --------------------------------------------------------------------------------------------- #


class BenchNats:
    def __init__(self, store: Path) -> None:
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        log = (store / "nats.log").open("ab")
        cmd = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store), "-m", "0"]
        self.process = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)

    def version(self) -> str:
        return subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True).stdout.strip()


def start_api(port: int, database_url: str, extra: dict[str, str], workers: int | None) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=database_url, DEV_MODE="1", LOG_LEVEL="WARNING", **extra)
    cmd = [str(VENV_BIN / "iot-platform"), "serve", "--port", str(port), "--no-migrate"]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, env=env, cwd=PROJECT_ROOT, start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


async def _consumer_state(nats_url: str) -> tuple[int, int]:
    """The consumer's lag and the stream's bytes; retried while a busy server is slow to answer."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream(timeout=10)
        for attempt in range(10):
            try:
                info = await js.consumer_info(STREAM, "writers", timeout=10)
                stream = await js.stream_info(STREAM)
                return (info.num_pending or 0) + (info.num_ack_pending or 0), stream.state.bytes
            except TimeoutError:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")
    finally:
        await nc.close()


def drain(args: argparse.Namespace, nats_url: str, db_url: str, groups: list[ProcGroup]) -> dict[str, Any]:
    lag, stream_bytes = asyncio.run(_consumer_state(nats_url))
    env = dict(os.environ, DATABASE_URL=db_url, DEV_MODE="1", LOG_LEVEL="WARNING", **buffer_settings(nats_url))
    writers = [
        subprocess.Popen([str(VENV_BIN / "iot-platform"), "writer"], env=env, cwd=PROJECT_ROOT, start_new_session=True)
        for _ in range(args.writers)
    ]
    meter = CpuMeter(groups + [ProcGroup(f"writer{i}", w.pid) for i, w in enumerate(writers)])
    cpu0 = meter.start()
    started = time.perf_counter()
    samples = []
    try:
        while True:
            remaining, _ = asyncio.run(_consumer_state(nats_url))
            samples.append((round(time.perf_counter() - started, 1), remaining))
            if remaining == 0:
                break
            if any(w.poll() is not None for w in writers):
                raise RuntimeError("a writer exited during the drain")
            time.sleep(0.5)
        elapsed = time.perf_counter() - started
        cpu = meter.stop(cpu0)
    finally:
        for w in writers:
            stop_process(w)
    return {"messages": lag, "stream_bytes": stream_bytes, "elapsed": elapsed, "cpu": cpu, "lag_samples": samples}


# --------------------------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------------------------- #


def _needed(target: DatabaseTarget | None) -> DatabaseTarget:
    """The database of a scenario that was asked for (created only then)."""
    if target is None:
        raise RuntimeError("the scenario's database was not created")
    return target


def verify_buffered(db_url: str, accepted_events: int) -> dict[str, Any]:
    with psycopg.connect(db_url) as conn:
        raw, doubled, no_outcome, many = one_row(
            conn.execute(
                """
            select count(*),
                   count(*) - count(distinct (request_id, batch_index)),
                   count(*) filter (where n = 0), count(*) filter (where n > 1)
            from (
                select r.request_id, r.batch_index,
                       (p.raw_record_id is not null)::int + (d.raw_record_id is not null)::int
                       + (s.raw_record_id is not null)::int + (e.raw_record_id is not null)::int as n
                from ingest.raw_record r
                left join ingest.processed_record p on p.raw_record_id = r.id
                left join ingest.raw_duplicate d on d.raw_record_id = r.id
                left join ingest.device_startup s on s.raw_record_id = r.id
                left join ingest.ingest_error e on e.raw_record_id = r.id
            ) x
            """
            )
        )
    checks = {
        "raw rows >= accepted events": raw >= accepted_events,
        "no request stored twice": doubled == 0,
        "each raw row exactly one outcome": no_outcome == 0 and many == 0,
    }
    return {"raw_rows": raw, "accepted_events": accepted_events, "checks": checks, "ok": all(checks.values())}


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        if not runs:
            continue
        s: dict[str, Any] = {"reps": len(runs)}
        for key in ("events_per_s", "requests_per_s", "p50_ms", "p95_ms", "p99_ms"):
            if key in runs[0]:
                s[key] = statistics.median(r[key] for r in runs)
        s["cpu"] = {k: statistics.median(r["cpu"].get(k, 0) for r in runs) for k in runs[0]["cpu"]}
        out[name] = s
    ceilings = {
        "batch1000": "copy",
        "single": "noop",
        "js1000": None,
        "buf_batch1000": "js1000",
        "buf_single": "noop",
    }
    for name, ceiling in ceilings.items():
        if name in out and ceiling in out:
            out[name]["ratio_to_ceiling"] = out[name]["events_per_s"] / out[ceiling]["events_per_s"]
    if "buf_batch1000" in out and "batch1000" in out:
        out["buf_batch1000"]["ratio_to_direct"] = (
            out["buf_batch1000"]["events_per_s"] / out["batch1000"]["events_per_s"]
        )
    if "buf_single" in out and "single" in out:
        out["buf_single"]["ratio_to_direct"] = out["buf_single"]["events_per_s"] / out["single"]["events_per_s"]
    return out


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    head = (
        f"{'scenario':<14} {'events/s':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'/ceiling':>8} {'/direct':>8} "
        f"{'API%':>5} {'PG%':>5} {'NATS%':>6} {'load%':>6} {'box%':>5}"
    )
    print(head)
    print("-" * len(head))
    for name in SCENARIOS:
        found = summary.get(name)
        if not found:
            continue
        s: dict[str, Any] = found
        cpu = s["cpu"]

        def fmt(key: str, spec: str, s: dict[str, Any] = s) -> str:
            value = s.get(key)
            width = "".join(ch for ch in spec.split(",")[0].split(".")[0] if ch.isdigit())
            return format(value, spec) if value is not None else format("-", f">{width}")

        print(
            f"{name:<14} {s['events_per_s']:>9,.0f} {fmt('requests_per_s', '>8,.0f')} {fmt('p50_ms', '>7.1f')} "
            f"{fmt('p99_ms', '>7.1f')} {fmt('ratio_to_ceiling', '>8.1%')} {fmt('ratio_to_direct', '>8.1%')} "
            f"{cpu.get('api', 0):>5.0f} {cpu.get('postgres', 0):>5.0f} {cpu.get('nats', 0):>6.0f} "
            f"{cpu.get('loadgen', 0):>6.0f} {cpu.get('machine', 0):>5.0f}"
        )
    print("ceilings: batch1000 -> copy, single and buf_single -> noop (HTTP), buf_batch1000 -> js1000 (JetStream)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; the table shows medians (default 3)")
    p.add_argument("--quick", action="store_true", help="one repetition of 4 s each, a 200k-event backlog")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--workers", type=int, default=None, help="API uvicorn workers (default: serve's)")
    p.add_argument("--clients", type=int, default=4, help="batch client connections (default 4)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--wrk-threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--copy-batches", type=int, default=300)
    p.add_argument("--drain-events", type=int, default=1_000_000, help="backlog the writers drain (default 1 M)")
    p.add_argument("--writers", type=int, default=1, help="writer processes for the drain (default 1)")
    p.add_argument("--server-url", default=None, help="a PostgreSQL server instead of the embedded one")
    p.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / ".data" / "bench-pg")
    p.add_argument("--nats-dir", type=Path, default=PROJECT_ROOT / ".data" / "bench-nats")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.reps, args.copy_batches, args.drain_events = 4.0, 1, 100, 200_000
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None and {"noop", "single", "buf_single"} & set(args.scenarios):
        print(WRK_INSTALL, file=sys.stderr)
        return 2
    print(f"starting the benchmark's PostgreSQL ({args.server_url or args.data_dir}) and nats-server ...", flush=True)
    db = BenchDatabase(args.server_url, args.data_dir)
    js = BenchNats(args.nats_dir)
    try:
        return _run(args, db, js)
    finally:
        stop_process(js.process)
        shutil.rmtree(args.nats_dir, ignore_errors=True)
        db.stop()


def _run(args: argparse.Namespace, db: BenchDatabase, js: BenchNats) -> int:
    direct_db, buffered_db = db.fresh(API_DB), db.fresh(BUFFERED_DB)
    copy_db = db.fresh(COPY_DB) if "copy" in args.scenarios else None
    overrides: dict[str, Any] = {k.lower(): v for k, v in buffer_settings(js.url).items()}
    settings = Settings(dev_mode=True, **overrides)

    async def create_stream() -> None:
        nc = await nats.connect(js.url)
        await ensure_stream(nc.jetstream(), settings)
        await nc.close()

    asyncio.run(create_stream())
    direct_state, buffered_state = TimeCursor(), TimeCursor()
    ports = {"direct": free_port(), "buffered": free_port(), "noop": free_port()}
    procs: list[subprocess.Popen] = []
    report: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.buffered_bench", *sys.argv[1:]]),
        "machine": machine_info(),
        "postgres": db.settings(),
        "nats": js.version(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        procs.append(start_api(ports["direct"], direct_db.url, {}, args.workers))
        procs.append(start_api(ports["buffered"], buffered_db.url, buffer_settings(js.url), args.workers))
        noop_cmd = [sys.executable, "-m", "bench.noop_app", "--port", str(ports["noop"])]
        noop_cmd += ["--workers", str(args.workers or default_workers())]
        procs.append(subprocess.Popen(noop_cmd, cwd=PROJECT_ROOT, start_new_session=True))
        wait_ready(f"http://127.0.0.1:{ports['noop']}/readyz", procs[-1])
        pg = [ProcGroup("postgres", db.postmaster_pid)] if db.postmaster_pid else []
        nats_group = ProcGroup("nats", js.process.pid)
        meters = {
            "direct": CpuMeter([ProcGroup("api", procs[0].pid), *pg, nats_group]),
            "buffered": CpuMeter([ProcGroup("api", procs[1].pid), *pg, nats_group]),
            "noop": CpuMeter([ProcGroup("api", procs[2].pid), *pg, nats_group]),
        }
        d, b = ports["direct"], ports["buffered"]
        steps = {
            "copy": lambda: run_copy(_needed(copy_db), direct_state, args.copy_batches, meters["direct"]),
            "batch1000": lambda: run_batch(d, 1000, args.clients, args.duration, direct_state, meters["direct"]),
            "single": lambda: run_wrk(
                d, args.connections, args.wrk_threads, args.duration, direct_state, meters["direct"], True
            ),
            "noop": lambda: run_wrk(
                ports["noop"], args.connections, args.wrk_threads, args.duration, direct_state, meters["noop"], False
            ),
            "js1000": lambda: run_publish_ceiling(js.url, 1000, args.duration, meters["buffered"]),
            "js1": lambda: run_publish_ceiling(js.url, 1, args.duration, meters["buffered"]),
            "buf_batch1000": lambda: run_batch(
                b, 1000, args.clients, args.duration, buffered_state, meters["buffered"], expect=202
            ),
            "buf_single": lambda: run_wrk(
                b, args.connections, args.wrk_threads, args.duration, buffered_state, meters["buffered"], True
            ),
        }
        print("warming up ...", flush=True)
        run_batch(d, 1000, 2, 2.0, direct_state, meters["direct"])
        run_batch(b, 1000, 2, 2.0, buffered_state, meters["buffered"], expect=202)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.scenarios}
        for rep in range(args.reps):
            for name in args.scenarios:
                result = steps[name]()
                results[name].append(result)
                refused = result.get("non_200") or result.get("errors") or 0
                print(
                    f"rep {rep + 1}/{args.reps} {name:<14} {result['events_per_s']:>10,.0f} events/s"
                    + (f"  p99 {result['p99_ms']:.1f} ms" if "p99_ms" in result else "")
                    + (f"  ({refused} answers not 2xx: refused, the client retries)" if refused else ""),
                    flush=True,
                )
        # the backlog: what the 202 scenarios accepted, topped up with batches of 1,000
        accepted = buffered_state["expected_items"]
        while accepted < args.drain_events:
            seconds = max(1.0, min(30.0, (args.drain_events - accepted) / 40_000))
            run_batch(b, 1000, args.clients, seconds, buffered_state, meters["buffered"], expect=202)
            accepted = buffered_state["expected_items"]
        report["runs"] = results
        report["summary"] = summarize(results)
        partial = RESULTS_DIR / f"buffered-{dt.datetime.now():%Y%m%d-%H%M%S}-before-drain.json"
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(report, indent=1, default=str))
        print_table(report["summary"])
        stop_process(procs[0])  # the direct API's writers would compete for PostgreSQL during the drain
        print(f"draining a backlog of {accepted:,} events with {args.writers} writer(s) ...", flush=True)
        drained = drain(args, js.url, buffered_db.url, [*pg, nats_group])
        drained.update(events=accepted, events_per_s=accepted / drained["elapsed"])
        print(f"drained {accepted:,} events ({drained['messages']:,} messages) in {drained['elapsed']:.1f} s")
    finally:
        for proc in procs:
            stop_process(proc)
    report["runs"] = results
    report["summary"] = summary = summarize(results)
    report["drain"] = drained
    report["verification"] = verification = verify_buffered(buffered_db.url, accepted)
    out = args.out or RESULTS_DIR / f"buffered-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print()
    print_table(summary)
    print(
        f"drain: {drained['events']:,} events in {drained['messages']:,} messages, {drained['elapsed']:.1f} s with "
        f"{args.writers} writer(s) = {drained['events_per_s']:,.0f} events/s; CPU {drained['cpu']}"
    )
    print(f"verification: {verification}")
    print(f"results: {out}")
    return 0 if verification["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
