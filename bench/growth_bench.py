"""Does the analytics' cost follow the new data or the history? dbt and the hourly Dagster run at growing sizes.

    make bench-growth                                   # = python -m bench.growth_bench (1M and 10M facts)
    python -m bench.growth_bench --sizes 100k,1M        # smaller (--quick is the same)

Per size, in a database of its own (iot_growth_<size>, on DATABASE_URL's server or the embedded
one; dropped at the end, also on failure):

  load      scripts/bulk_load_facts.py --fast: N facts over 30 days, one ledger row each, from the
            same fleet at every size (--devices, default 2,000)
  full      the first `dbt build` (every model from all history, every test over all of it)
  steady    one hour of facts appended (--append-hour), then the hourly job's own `dbt build`:
            incremental marts, tests over the changed window (DBT_TEST_SINCE = the rollup's watermark);
            --steady-reps times (default 3), the median, with each node's time from dbt's
            run_results.json (the slowest of the last repetition are printed)
  dagster   one more hour appended, then the scheduled job end to end as the daemon launches it
            (`dagster job execute -j analytics_hourly_job`: process start, code location load, the
            run, teardown), with the run's step timings from its event log (orchestration/lib/timings.py)

and prints them side by side, with the ratio of the steady-state build between the largest and the
smallest size (the target: <= 1.2) and the Dagster run at the largest (the target: <= 60 s). JSON
goes to bench/results/. Load times are printed but not the point.

What differs between the sizes is the history only: the fleet and every appended hour are the same
size at each (--hour-facts, default the smallest size's average hourly rate, 1,389 facts at 1 M
over 30 days). Scaling the hour with the history, as the loader's own default does, would measure
10 x the new data at 10 M: `--hour-facts 0` does that (each size's average rate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget, resolve_target, tool_environment
from orchestration.lib.dbt.cli import DAGSTER_TARGET_PATH, DBT_EXECUTABLE, DBT_PROJECT_DIR, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent
UNITS = {"k": 1_000, "m": 1_000_000}


def parse_size(text: str) -> int:
    text = text.strip().lower()
    return int(float(text[:-1]) * UNITS[text[-1]]) if text[-1] in UNITS else int(text)


def label(size: int) -> str:
    return f"{size // 1_000_000}m" if size % 1_000_000 == 0 else f"{size // 1_000}k"


def run(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} failed ({result.returncode}):\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    return time.perf_counter() - started


def rollup_watermark(target: DatabaseTarget) -> str:
    with psycopg.connect(target.url) as conn:
        row = conn.execute("select max(last_ingested_at) from analytics.fct_readings_hourly").fetchone()
    assert row and row[0]
    return row[0].isoformat()


def ingest_bytes(target: DatabaseTarget) -> int:
    """The ledger's and the facts' size on disk, indexes and TOAST included."""
    with psycopg.connect(target.url) as conn:
        row = conn.execute(
            "select pg_total_relation_size('ingest.raw_record') + pg_total_relation_size('ingest.processed_record')"
        ).fetchone()
    assert row
    return int(row[0])


def dbt(args: list[str], env: dict[str, str], target_dir: Path) -> float:
    command = [DBT_EXECUTABLE, *args, "--target-path", str(target_dir)]
    if args[0] == "build":
        command += ["--exclude-resource-type", "unit_test"]
    command += ["--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)]
    return run(command, env, cwd=DBT_PROJECT_DIR)


def node_times(target_dir: Path) -> dict[str, float]:
    """Each node's execution time in the last dbt invocation (run_results.json), slowest first."""
    results = json.loads((target_dir / "run_results.json").read_text())["results"]
    times = {r["unique_id"].split(".")[-1] if r["unique_id"].startswith("model.") else r["unique_id"].split(".")[2]:
             r["execution_time"] for r in results}  # fmt: skip
    return dict(sorted(times.items(), key=lambda item: -item[1]))


def measure(server: DatabaseTarget, size: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    name = f"iot_growth_{label(size)}"
    target = server.with_database(name)
    env = tool_environment(target)
    env.update(DBT_TARGET="dev", DATABASE_URL=server.with_database("postgres").url)
    figures: dict[str, Any] = {"facts": size, "devices": args.devices, "hour_facts": args.hour_facts or "average"}
    loader = [sys.executable, "scripts/bulk_load_facts.py", "--database", name]
    append = [*loader, "--append-hour", *(["--hour-facts", str(args.hour_facts)] if args.hour_facts else [])]
    try:
        print(f"[{label(size)}] loading {size:,} facts", file=sys.stderr, flush=True)
        load = [*loader, "--facts", str(size), "--devices", str(args.devices), "--recreate", "--fast"]
        figures["load_s"] = round(run(load, env), 1)
        figures["ingest_bytes_per_fact"] = ingest_bytes(target) // size
        target_dir = work / f"target_{label(size)}"
        dbt(["parse", "--quiet"], env, target_dir)  # as `make up` prepares it: the runs below partial-parse
        figures["full_build_s"] = round(dbt(["build"], env, target_dir), 1)
        print(f"[{label(size)}] full build {figures['full_build_s']} s", file=sys.stderr, flush=True)

        steady = []
        for _ in range(args.steady_reps):
            run(append, env)
            window = {**env, "DBT_TEST_SINCE": rollup_watermark(target)}
            steady.append(round(dbt(["build"], window, target_dir), 1))
        figures["steady_builds_s"] = steady
        figures["steady_build_s"] = statistics.median(steady)
        figures["steady_nodes_s"] = node_times(target_dir)
        print(f"[{label(size)}] steady-state build {figures['steady_build_s']} s {steady}", file=sys.stderr, flush=True)

        run(append, env)
        home = work / f"dagster_{label(size)}"
        home.mkdir()
        dagster_env = {**env, "DAGSTER_HOME": str(home), "DBT_TARGET_PATH": str(target_dir)}
        figures["dagster_hourly_s"] = round(
            run(
                [
                    str(BIN / "dagster"),
                    "job",
                    "execute",
                    "-m",
                    "orchestration.definitions",
                    "-j",
                    "analytics_hourly_job",
                ],
                dagster_env,
            ),
            1,
        )
        figures["dagster_run"] = run_timings(home)
        print(f"[{label(size)}] Dagster hourly run {figures['dagster_hourly_s']} s", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            with psycopg.connect(server.with_database("postgres").url, autocommit=True) as admin:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
    return figures


def run_timings(home: Path) -> dict[str, Any]:
    """The timed run's step timings, read from its instance's event log in a process of its own."""
    code = (
        "import json, dagster as dg; from orchestration.lib.timings import run_timings\n"
        "with dg.DagsterInstance.get() as i: print(json.dumps(run_timings(i, i.get_runs(limit=1)[0].run_id)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout) if result.returncode == 0 else {"error": result.stderr[-500:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M", help="comma-separated fact counts (100k, 1M, 10M)")
    parser.add_argument("--quick", action="store_true", help="= --sizes 100k,1M")
    parser.add_argument("--devices", type=int, default=2000, help="the fleet, the same at every size (default 2000)")
    parser.add_argument(
        "--hour-facts", type=int, default=None, help="facts per appended hour (default: the smallest size's average)"
    )
    parser.add_argument("--steady-reps", type=int, default=3, help="steady-state builds per size; the median")
    parser.add_argument("--keep", action="store_true", help="keep the databases (iot_growth_<size>) for a look")
    args = parser.parse_args(argv)
    sizes = sorted(parse_size(s) for s in ("100k,1M" if args.quick else args.sizes).split(","))
    if args.hour_facts is None:
        args.hour_facts = max(1, round(sizes[0] / (30 * 24)))
    server = resolve_target(Settings(dev_mode=True)).with_database("postgres")
    results: dict[str, Any] = {"sizes": {}, "started": dt.datetime.now(dt.UTC).isoformat()}
    # The code location's manifest, as `make up` prepares it before Dagster starts.
    parse_manifest(DBT_PROJECT_DIR / DAGSTER_TARGET_PATH)
    with tempfile.TemporaryDirectory(prefix="growth-bench-", ignore_cleanup_errors=True) as work:
        for size in sizes:
            results["sizes"][label(size)] = measure(server, size, Path(work), args)

    print(
        f"\n{'facts':>8} {'load s':>8} {'full dbt build s':>17} {'steady dbt build s':>19} {'Dagster hourly run s':>21}"
    )
    for name, figures in results["sizes"].items():
        print(
            f"{name:>8} {figures['load_s']:>8} {figures['full_build_s']:>17} {figures['steady_build_s']:>19} "
            f"{figures['dagster_hourly_s']:>21}"
        )
    first, last = results["sizes"][label(sizes[0])], results["sizes"][label(sizes[-1])]
    if len(sizes) > 1:
        ratio = last["steady_build_s"] / first["steady_build_s"]
        results["steady_ratio"] = round(ratio, 2)
        print(f"\nsteady-state build {label(sizes[-1])} / {label(sizes[0])}: {ratio:.2f} (target <= 1.2)")
    print(f"Dagster hourly run at {label(sizes[-1])}: {last['dagster_hourly_s']} s end to end (target <= 60 s)")
    for name, figures in results["sizes"].items():
        slowest = list(figures["steady_nodes_s"].items())[:8]
        print(f"  {name} steady build, slowest nodes: " + ", ".join(f"{n} {t:.2f}" for n, t in slowest))
    run_info = last.get("dagster_run", {})
    print(f"  its run: {run_info.get('run_s')} s; steps: {run_info.get('steps_s')}; dbt: {run_info.get('dbt')}")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"growth-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
