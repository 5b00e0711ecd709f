"""MQTT door benchmark: the bridge's throughput side by side with the broker's own ceiling, one run.

    make bench-mqtt                              # = python -m bench.mqtt_bench
    python -m bench.mqtt_bench --messages 5000 --repeat 1      # a quick look

It starts its own PostgreSQL (pgserver under .data/bench-pg, as `make bench`, or --server-url) and its
own Mosquitto (deploy/mosquitto/mosquitto.conf on a free port, anonymous), then per repetition and
scenario drains one backlog of the same messages: the consumer's persistent session is created,
the messages are published QoS 1 while it is away (mosquitto_pub, one process per device topic),
and the time from its first to its last message is measured once it comes back:

  broker   the broker's ceiling: mosquitto_sub (C, QoS 1) takes the backlog and does nothing
  noop     the bridge's own stack: `Bridge` with a door that stores nothing (bench/mqtt_noop.py):
           the same client, session, window, ordered acks and result publishes
  bridge   `iot-platform mqtt`: every message stored through the write path, its result published

for single events and for messages of 100 events (JSON arrays), with the CPU of the consumer and of
PostgreSQL per message. Verifies with SQL that every message is in the ledger once; prints the
medians and writes JSON to bench/results/.
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

import orjson
import psutil
import psycopg

from bench.ingest_bench import BenchDatabase, CpuMeter, ProcGroup, machine_info, one_row, stop_process
from bench.mosquitto import OwnedMosquitto
from ingest_service.core.config import PROJECT_ROOT
from ingest_service.core.database import DatabaseTarget
from platform_cli.processes import iot_platform

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PYTHON = sys.executable
CONSUMERS = ("broker", "noop", "bridge")
DEVICES = 20


def write_backlog(folder: Path, prefix: str, messages: int, batch: int, start: float) -> list[tuple[str, Path]]:
    """One file of messages (one per line) per device topic; every event distinct."""
    files = []
    for device_id in range(1, DEVICES + 1):
        path = folder / f"device-{device_id}.txt"
        lines = []
        for m in range(messages // DEVICES):
            events = [
                {
                    "device_id": device_id,
                    "event_type": "platform_extension_mm",
                    "value": (m * batch + e) % 301 - 150,
                    "timestamp": start + (m * batch + e) * 0.001,
                }
                for e in range(batch)
            ]
            lines.append(orjson.dumps(events[0] if batch == 1 else events))
        path.write_bytes(b"\n".join(lines) + b"\n")
        files.append((f"{prefix}/{device_id}/telemetry", path))
    return files


def publish_backlog(broker: OwnedMosquitto, files: list[tuple[str, Path]]) -> float:
    """mosquitto_pub -l (one message per line, QoS 1), all device topics at once; returns seconds."""
    started = time.perf_counter()
    procs = []
    for topic, path in files:
        with path.open("rb") as stdin:
            cmd = ["mosquitto_pub", "-V", "mqttv5", "-q", "1", "-p", str(broker.port), "-t", topic, "-l"]
            procs.append(subprocess.Popen(cmd, stdin=stdin))
    for proc in procs:
        if proc.wait(600) != 0:
            raise RuntimeError(f"mosquitto_pub exited {proc.returncode}")
    return time.perf_counter() - started


def raw_rows(target: DatabaseTarget) -> int:
    with psycopg.connect(target.url, autocommit=True) as conn:
        row = conn.execute("select count(*) from ingest.raw_record").fetchone()
    return row[0] if row else 0


class Consumer:
    """One of the three consumers: its process, how to make its session, how to see it done."""

    def __init__(self, kind: str, broker: OwnedMosquitto, prefix: str, env: dict[str, str], logs: Path) -> None:
        self.kind, self.broker, self.prefix, self.env, self.logs = kind, broker, prefix, env, logs
        self.client_id = f"{prefix}-{kind}"
        self.process: subprocess.Popen | None = None
        self.out_path = logs / f"{self.client_id}.out"
        self.log_path = logs / f"{self.client_id}.log"

    def command(self, count: int) -> list[str]:
        if self.kind == "broker":
            topic = f"$share/ingest/{self.prefix}/+/telemetry"
            return [
                "mosquitto_sub", "-V", "mqttv5", "-q", "1", "-p", str(self.broker.port), "-c", "-i", self.client_id,
                "-x", "3600", "-t", topic, "-C", str(count), "-F", "%U",
            ]  # fmt: skip
        if self.kind == "noop":
            return [PYTHON, "-m", "bench.mqtt_noop", "--count", str(count)]
        return iot_platform("mqtt", "--no-migrate")

    def start(self, count: int) -> None:
        out = self.out_path.open("ab")
        err = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(count),
            cwd=PROJECT_ROOT,
            env={**self.env, "MQTT_CLIENT_ID": self.client_id, "MQTT_TOPIC_PREFIX": self.prefix},
            stdout=out,
            stderr=err,
            start_new_session=True,
        )

    def wait_subscribed(self) -> None:
        """Until the session exists at the broker (its subscription stays while it is away)."""
        assert self.process is not None
        if self.kind == "broker":
            time.sleep(1.0)  # mosquitto_sub subscribes right after CONNACK
            return
        log = self.log_path
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {log.read_text()[-2000:]}")
            if '"message":"subscribed"' in log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not subscribe")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def measure(
    consumer: Consumer, count: int, target: DatabaseTarget, pg: ProcGroup, files: list[tuple[str, Path]], events: int
) -> dict[str, Any]:
    # 1. the session, then away
    consumer.start(count)
    consumer.wait_subscribed()
    consumer.stop()
    # 2. the backlog, published while it is away
    publish_seconds = publish_backlog(consumer.broker, files)
    before = raw_rows(target) if consumer.kind == "bridge" else 0
    # 3. back: time the drain; CPU from its first message on (start-up is not the door's cost)
    consumer.start(count)
    assert consumer.process is not None
    group = ProcGroup(consumer.kind, consumer.process.pid)
    assert consumer.broker.process is not None
    mosquitto = ProcGroup("mosquitto", consumer.broker.process.pid)
    meter = CpuMeter([group, mosquitto, pg] if consumer.kind == "bridge" else [group, mosquitto])
    out_size = consumer.out_path.stat().st_size
    mark: dict[str, Any] | None = None
    done_at_mark = 0
    first = last = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and last is None:
        out = consumer.out_path.read_bytes()[out_size:]
        if consumer.kind == "bridge":
            done = (raw_rows(target) - before) // events
            now = time.time()
            if done and first is None:
                first = now
            if done >= count:
                last = now
        elif consumer.kind == "broker":  # one arrival timestamp per line
            done = out.count(b"\n")
            if consumer.process.poll() is not None:
                stamps = out.split()
                first, last = float(stamps[0]), float(stamps[-1])
        else:  # the no-op door prints when its first and its last message arrived
            lines = [json.loads(line) for line in out.splitlines() if line.strip()]
            done = 1 if lines else 0
            if lines and "last" in lines[-1]:
                first, last = lines[-1]["first"], lines[-1]["last"]
        if mark is None and done:
            mark, done_at_mark = meter.start(), done
        time.sleep(0.02)
    if mark is None or first is None or last is None:
        consumer.stop()
        raise RuntimeError(f"{consumer.kind} did not finish the backlog")
    cpu = meter.stop(mark)
    wall = time.perf_counter() - mark["wall"]
    consumer.stop()
    measured = max(1, count - done_at_mark)
    seconds = max(last - first, 1e-6)
    result = {
        "consumer": consumer.kind,
        "messages": count,
        "events": count * events,
        "seconds": round(seconds, 2),
        "messages_per_s": round(count / seconds),
        "events_per_s": round(count * events / seconds),
        "publish_seconds": round(publish_seconds, 1),
        "cpu_percent": cpu,
    }
    result["consumer_cpu_us_per_message"] = round(cpu[consumer.kind] / 100 * wall / measured * 1e6)
    result["mosquitto_cpu_us_per_message"] = round(cpu["mosquitto"] / 100 * wall / measured * 1e6)
    if consumer.kind == "bridge":
        result["postgres_cpu_us_per_message"] = round(cpu[pg.name] / 100 * wall / measured * 1e6)
    return result


def verify(target: DatabaseTarget, expected_raw: int) -> dict[str, Any]:
    with psycopg.connect(target.url, autocommit=True) as conn:
        raw, keys, facts = one_row(
            conn.execute(
                """select count(*), count(distinct request_id),
                      (select count(*) from ingest.processed_record) from ingest.raw_record"""
            )
        )
    ok = raw == facts == expected_raw
    return {"raw_rows": raw, "message_keys": keys, "facts": facts, "expected": expected_raw, "ok": ok}


def run(args: argparse.Namespace) -> dict[str, Any]:
    db = BenchDatabase(args.server_url, PROJECT_ROOT / ".data" / "bench-pg")
    root = Path(tempfile.mkdtemp(prefix="iotmb-", dir="/tmp"))
    root.chmod(0o755)  # the broker runs as the mosquitto user and keeps its store below
    prefix = f"bench-{os.getpid()}"
    broker = OwnedMosquitto(root / "broker", prefix).start()
    try:
        target = db.fresh("iot_bench_mqtt")
        postmaster = db.postmaster_pid or _postmaster_of(target)
        pg = ProcGroup("postgres", postmaster)
        env = {
            **os.environ,
            "DATABASE_URL": target.url,
            "DEV_MODE": "1",
            "LOG_LEVEL": "INFO",
            "MQTT_URL": broker.url(),
            "MQTT_SESSION_EXPIRY_SECONDS": "3600",
        }
        scenarios = [("single", args.messages, 1), ("batch100", max(DEVICES, args.messages // 25), 100)]
        results: dict[str, list[dict[str, Any]]] = {}
        expected_raw = 0
        start = time.time() - 3 * 86400
        for rep in range(args.repeat):
            for name, count, events in scenarios:
                count -= count % DEVICES
                for kind in CONSUMERS:
                    # A topic prefix per measurement: no session of another one shares its subscription.
                    run_prefix = f"{prefix}-{rep}-{name}-{kind}"
                    folder = root / run_prefix
                    folder.mkdir()
                    files = write_backlog(folder, run_prefix, count, events, start)
                    start += count * events * 0.001 + 1
                    consumer = Consumer(kind, broker, run_prefix, env, root)
                    result = measure(consumer, count, target, pg, files, events)
                    if kind == "bridge":
                        expected_raw += count * events
                    results.setdefault(f"{name}/{kind}", []).append(result)
                    print(json.dumps({"rep": rep, "scenario": name, **result}), flush=True)
        return {"results": results, "verify": verify(target, expected_raw), "machine": machine_info()}
    finally:
        broker.stop()
        db.stop()


def _postmaster_of(target: DatabaseTarget) -> int:
    with psycopg.connect(target.url, autocommit=True) as conn:
        backend = one_row(conn.execute("select pg_backend_pid()"))[0]
    return psutil.Process(backend).ppid()


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, runs in results.items():
        out[key] = {
            field: statistics.median(r[field] for r in runs)
            for field in (
                "messages_per_s",
                "events_per_s",
                "consumer_cpu_us_per_message",
                "mosquitto_cpu_us_per_message",
            )
        }
        if "postgres_cpu_us_per_message" in runs[0]:
            out[key]["postgres_cpu_us_per_message"] = statistics.median(r["postgres_cpu_us_per_message"] for r in runs)
    return out


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    print(
        "\nscenario           messages/s   events/s   ratio to broker"
        "   consumer CPU us/msg   Mosquitto CPU us/msg   PostgreSQL CPU us/msg"
    )
    for scenario in ("single", "batch100"):
        ceiling = summary[f"{scenario}/broker"]["messages_per_s"]
        for kind in CONSUMERS:
            row = summary[f"{scenario}/{kind}"]
            pg = row.get("postgres_cpu_us_per_message", "-")
            # mosquitto_sub exits as it finishes, before its CPU can be read: its cost is not the point
            consumer_cpu = "-" if kind == "broker" else row["consumer_cpu_us_per_message"]
            ratio = f"{row['messages_per_s'] / ceiling:.0%}"
            print(
                f"{scenario + '/' + kind:<18} {row['messages_per_s']:>10,.0f} {row['events_per_s']:>10,.0f}"
                f" {ratio:>17} {consumer_cpu:>21} {row['mosquitto_cpu_us_per_message']:>22} {pg:>23}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000, help="single-event messages per run (default 20,000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported (default 3)")
    parser.add_argument("--server-url", default=None, help="a PostgreSQL server to use instead of pgserver")
    args = parser.parse_args(argv)
    report = run(args)
    summary = summarize(report["results"])
    print_table(summary)
    print(f"\nverify: {report['verify']}")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"mqtt-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({**report, "summary": summary}, indent=2))
    print(f"written to {path}")
    return 0 if report["verify"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
