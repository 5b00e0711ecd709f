"""`iot-platform up` (what `make up` runs): the database, migrations, the API, its doors, the simulator
and Dagster, supervised until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ingest_service.core.config import Settings
from ingest_service.core.database import (
    DatabaseTarget,
    embedded_data_dir,
    resolve_target,
    stop_embedded,
    tool_environment,
)
from platform_cli.database import DBT_PROJECT_DIR
from platform_cli.processes import Spawn, Supervised, iot_platform, python_module, start, venv_tool, wait_ready
from platform_cli.services import Fleet, fleet_options

if TYPE_CHECKING:
    from platform_cli.dagster import DagsterStartup

# When `up` tells the API to expect the first dbt build (it starts once the first event is stored).
FIRST_BUILD_EXPECTED_AFTER_SECONDS = 15.0
# `make up` passes the moment it was typed, so the first-run times include everything before this
# process too (make, the venv check, Python's start).
STARTED_AT_ENV = "UP_STARTED_AT"
# `iot-platform dbt build` without unit tests (CI runs those), as dbt itself: `up` has the database's
# POSTGRES_* environment already, and on a busy machine the CLI's own start costs seconds.
FIRST_DBT_BUILD = [
    venv_tool("dbt"), "build", "--exclude-resource-type", "unit_test",
    "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
]  # fmt: skip


def _dev_settings() -> Settings:
    """`up` is the development platform (simulated devices, development secret) unless DEV_MODE=0."""
    os.environ.setdefault("DEV_MODE", "1")
    return Settings()


def _say(line: str) -> None:
    """A line of its own, also when the simulator's live progress line is on the terminal."""
    print(("\r\x1b[K" if sys.stdout.isatty() else "") + line, flush=True)


class FirstRun:
    """A newcomer's first minutes, timed from `make up`: the first event this run stored, then the
    first dbt build of the analytics models, started as soon as there is data to build from (not at
    the first hourly run, up to an hour later), and when it finished. Dagster starts meanwhile;
    neither waits for the other (measured on 2 busy cores, waiting for one shared dbt parse made
    the first build later, not sooner)."""

    def __init__(self, started_at: float, target: DatabaseTarget, spawn: Spawn, log: Path) -> None:
        self.started_at = started_at
        self.target = target
        self.spawn = spawn
        self.log = log
        self.first_event_at: float | None = None
        self.build: subprocess.Popen[bytes] | None = None
        self.build_finished_at: float | None = None
        self._log_offset = 0
        self._next_probe = 0.0

    def poll(self) -> list[str]:
        """Advance; returns the lines to print about what happened since the last call."""
        lines = []
        if self.first_event_at is None and time.monotonic() >= self._next_probe:
            self._next_probe = time.monotonic() + 0.5
            self.first_event_at = self._first_event_stored()
            if self.first_event_at is not None:
                lines.append(f"  first event   stored {self.first_event_at - self.started_at:.1f} s after `make up`")
        if self.first_event_at is not None and self.build is None:
            self._log_offset = self.log.stat().st_size if self.log.exists() else 0
            self.build = self.spawn(self.log.stem, FIRST_DBT_BUILD, task=True)
        if self.build is not None and self.build_finished_at is None and self.build.poll() is not None:
            self.build_finished_at = time.time()
            outcome = "finished" if self.build.returncode == 0 else f"failed (exit {self.build.returncode})"
            lines.append(
                f"  first dbt build {outcome} {self.build_finished_at - self.started_at:.1f} s after `make up`"
                f" ({self._summary()}; log {self.log})"
            )
        return lines

    def _first_event_stored(self) -> float | None:
        import psycopg

        since = datetime.fromtimestamp(self.started_at, UTC)
        try:
            with psycopg.connect(self.target.url, connect_timeout=2) as conn:
                row = conn.execute(
                    "select min(ingested_at) from ingest.processed_record where ingested_at >= %s", (since,)
                ).fetchone()
        except psycopg.Error:
            return None
        return row[0].timestamp() if row and row[0] else None

    def _summary(self) -> str:
        """dbt's own `Done. PASS=.. WARN=.. ERROR=..` line of this build."""
        with open(self.log, "rb") as log:
            log.seek(self._log_offset)
            found = re.findall(rb"Done\. (PASS=\d+ WARN=\d+ ERROR=\d+ SKIP=\d+)", log.read())
        return found[-1].decode() if found else "no summary"


class Simulator:
    """`generator | pipe_to_api` as two processes in sessions of their own, so Ctrl-C in the terminal
    does not reach them: `drain` stops the generator and lets the pipe deliver what it has read."""

    def __init__(self, url: str, fleet: Fleet, logs: Path, env: dict[str, str]) -> None:
        self.generator = start(
            python_module("publisher.iot_device_message_generator", *fleet.generator_args()),
            env=env,
            stdout=subprocess.PIPE,
        )
        pipe_args = ["--url", url, "--batch", str(fleet.batch), "--linger-ms", "200", "--progress"]
        pipe_args += ["--dead-letter", str(logs / "undelivered.ndjson")]
        self.pipe = start(python_module("publisher.pipe_to_api", *pipe_args), env=env, stdin=self.generator.stdout)
        assert self.generator.stdout is not None
        self.generator.stdout.close()  # the pipe process owns the read end now

    def drain(self) -> None:
        """Stop the generator, then give pipe_to_api a moment to send its last batch (stdin hits EOF)."""
        if self.generator.poll() is None:
            self.generator.terminate()
        try:
            self.pipe.wait(15)
        except subprocess.TimeoutExpired:
            pass


def start_doors(settings: Settings, api_url: str, spawn: Spawn) -> str:
    """The ingest doors besides HTTP (docs/mqtt.md): the MQTT bridge when MQTT_URL is set."""
    if not settings.mqtt_url:
        return f"HTTP {api_url}/ingest; MQTT off (set MQTT_URL)"
    from ingest_service.mqtt.bridge import BrokerAddress

    try:
        broker = BrokerAddress.from_url(settings.mqtt_url)
    except ValueError as exc:
        return f"HTTP {api_url}/ingest; MQTT off: {exc}"
    spawn("mqtt", iot_platform("mqtt", "--no-migrate"))
    prefix = settings.mqtt_topic_prefix
    return f"HTTP {api_url}/ingest; MQTT {broker} {prefix}/+/telemetry, {prefix}/+/startup (log: mqtt.log)"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command(help="database + migrations + API + simulator (+ Dagster): the whole platform")
@click.option("--port", type=int, default=8000, help="the ingest API's port")
@click.option("--dagster-port", type=int, default=3000, help="the Dagster UI's port")
@fleet_options
def up(port: int, dagster_port: int, fleet: Fleet) -> int:
    from ingest_service.core import migrate

    started_at = float(os.environ.pop(STARTED_AT_ENV, "") or time.time())
    settings = _dev_settings()
    pg_was_running = (embedded_data_dir(settings) / "postmaster.pid").exists()
    target = resolve_target(settings)
    migrate.upgrade(target, settings.retention_days)
    # With NATS_URL, the API buffers requests in JetStream and a writer stores them (docs/scaling.md).
    buffered = {"INGEST_BUFFER": "jetstream"} if settings.nats_url else None
    if buffered:
        from ingest_service.buffer.stream import ensure_stream_sync

        buffer_line = f"  buffer        NATS JetStream at {settings.nats_url}, " + ensure_stream_sync(
            settings.model_copy(update={"ingest_buffer": "jetstream"})
        )
    env = tool_environment(target)
    logs = settings.data_dir / "logs"
    processes = Supervised(logs, env)
    api_url = f"http://127.0.0.1:{port}"

    # A supervisor's SIGTERM or a closed terminal stops everything just like Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    simulator: Simulator | None = None
    try:
        # The first dbt build starts once the first event is stored, seconds after the API answers:
        # the API tells analytics clients when to expect it ("not built yet, first build at ...").
        due = datetime.fromtimestamp(time.time() + FIRST_BUILD_EXPECTED_AFTER_SECONDS, UTC).isoformat()
        serve = iot_platform("serve", "--port", str(port), "--no-migrate")
        api = processes.spawn("api", serve, {"ANALYTICS_FIRST_BUILD_AT": due, **(buffered or {})})
        wait_ready(api_url + "/readyz", process=api)
        doors = start_doors(settings, api_url, processes.spawn)
        if buffered:
            processes.spawn("writer", iot_platform("writer"), buffered)
            doors += "\n" + buffer_line + ", 1 writer (writer.log)"
        # The simulator streams as soon as the API answers: nothing of it waits for Dagster.
        simulator = Simulator(api_url + "/ingest", fleet, logs, env)
        processes.adopt(simulator.generator, simulator.pipe)
        first_run = FirstRun(started_at, target, processes.spawn, logs / "dbt-first-build.log")
        dagster = _dagster(dagster_port, env, processes.spawn, settings.data_dir)
        where = f"embedded PostgreSQL 16, data in {embedded_data_dir(settings)}" if target.embedded else "DATABASE_URL"
        print(
            f"\nIoT platform is up (API ready {time.time() - started_at:.1f} s after `make up`)\n"
            f"  database      {where}\n"
            f"                {target.url}\n"
            f"  ingest API    {api_url}/ingest   (docs {api_url}/docs, metrics {api_url}/metrics)\n"
            f"  doors         {doors}\n"
            f"  dashboard     {api_url}/dashboard   (analytics API {api_url}/analytics/)\n"
            f"  logs          {logs}/\n"
            f"  simulator     {fleet.devices} devices at {fleet.rate:g} events/s, "
            f"{fleet.new_firmware_share:.0%} on the new mm firmware\n"
            + ("  Dagster       starting (UI and schedule announced below)\n" if dagster else "")
            + "The first dbt build of the analytics models starts once the first event is stored.\n"
            "Ctrl-C stops everything; the data stays for the next `make up`.\n",
            flush=True,
        )
        while processes.all_running():
            for line in first_run.poll() + (dagster.poll(started_at) if dagster else []):
                _say(line)
            time.sleep(0.25)
        failed = processes.failed()
        if failed:
            print(f"\nstopped: a process exited: {failed[0].args!r} (see {logs}/)", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        print("\nstopping: the simulator first, so the pipe can deliver what it has read...", file=sys.stderr)
        if simulator is not None:
            simulator.drain()
        return 0
    finally:
        # A second Ctrl-C must not abandon the clean-up half-way and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        processes.stop()
        if target.embedded and not pg_was_running:
            stop_embedded(settings)


def _dagster(port: int, env: dict[str, str], spawn: Spawn, data_dir: Path) -> DagsterStartup | None:
    """Dagster's webserver and daemon beside the rest, when Dagster is installed."""
    try:
        from platform_cli.dagster import DagsterStartup
    except ImportError:
        return None
    return DagsterStartup(port, env, spawn, data_dir)
