"""Long-running commands: serve the API, publish simulated devices, bring the whole platform up."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from ingest_service.core.config import PROJECT_ROOT, Settings
from ingest_service.core.database import embedded_data_dir, resolve_target, stop_embedded, tool_environment

PYTHON = sys.executable
# When `up` tells the API to expect the first dbt build (it starts once the first event is stored).
FIRST_BUILD_EXPECTED_AFTER_SECONDS = 15.0


def _dev_settings() -> Settings:
    """`up` is the development platform (simulated devices, development secret) unless DEV_MODE=0."""
    os.environ.setdefault("DEV_MODE", "1")
    return Settings()


def default_workers() -> int:
    """WEB_CONCURRENCY when set (the uvicorn/gunicorn convention), else one worker per two cores:
    PostgreSQL usually shares the machine and spends more CPU per event than the API (3x on
    batches), and on 2 cores one worker measured best (docs/performance.md)."""
    configured = os.environ.get("WEB_CONCURRENCY", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, (os.cpu_count() or 1) // 2)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ingest_service.core import migrate
    from ingest_service.core.logging import configure_json_logging
    from ingest_service.core.server import prepare_server

    # No dev-mode default here: a production `serve` without a real PROVISION_SECRET refuses to start.
    settings = Settings()
    configure_json_logging(settings.log_level)
    target = resolve_target(settings)
    os.environ["DATABASE_URL"] = target.url  # workers resolve the same server without starting another
    if not args.no_migrate:
        migrate.upgrade(target, settings.retention_days)
        if settings.ingest_buffer == "jetstream":
            from ingest_service.buffer.stream import ensure_stream_sync

            ensure_stream_sync(settings)
    if args.workers > 1:
        # Each worker is its own process: prometheus-client's multiprocess mode sums their metrics.
        metrics_dir = settings.data_dir / "prometheus" / str(args.port)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run(
        "ingest_service.main:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,
        timeout_graceful_shutdown=30,
        **prepare_server(settings, args.workers),
    )
    return 0


def publisher_pipeline(
    url: str,
    generator_args: list[str],
    pipe_args: list[str],
    env: dict[str, str] | None = None,
    own_session: bool = False,
) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Start `generator | pipe_to_api` as two processes; returns both.

    With own_session, Ctrl-C in the terminal does not reach them: the caller stops the generator
    and lets the pipe deliver what it has read, so nothing ends up undelivered.
    """
    generator = subprocess.Popen(
        [PYTHON, "-m", "publisher.iot_device_message_generator", *generator_args],
        stdout=subprocess.PIPE,
        cwd=PROJECT_ROOT,
        env=env,
        start_new_session=own_session,
    )
    pipe = subprocess.Popen(
        [PYTHON, "-m", "publisher.pipe_to_api", "--url", url, *pipe_args],
        stdin=generator.stdout,
        cwd=PROJECT_ROOT,
        env=env,
        start_new_session=own_session,
    )
    assert generator.stdout is not None
    generator.stdout.close()  # the pipe process owns the read end now
    return generator, pipe


def _generator_args(args: argparse.Namespace) -> list[str]:
    out = ["--devices", str(args.devices), "--rate", str(args.rate)]
    if args.count is not None:
        out += ["--count", str(args.count)]
    if args.seed is not None:
        out += ["--seed", str(args.seed)]
    out += ["--new-firmware-share", str(args.new_firmware_share), "--upgrade-rate", str(args.upgrade_rate)]
    return out


def cmd_publish(args: argparse.Namespace) -> int:
    # One process that reads the API's answers, so provisioned devices report under their assigned id.
    options = ["--url", args.url, *_generator_args(args), "--batch", str(args.batch), "--progress"]
    simulator = subprocess.Popen([PYTHON, "-m", "publisher.simulate", *options], cwd=PROJECT_ROOT)
    try:
        return simulator.wait()
    except KeyboardInterrupt:
        # The simulator got the Ctrl-C too: it stops generating and delivers what it has generated.
        return simulator.wait()


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url} did not come up: its process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 20
    for proc in processes:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _drain_publisher(started: list[subprocess.Popen]) -> None:
    """Stop the generator, then give pipe_to_api a moment to send its last batch (stdin hits EOF)."""
    pipeline = [p for p in started if "publisher." in str(p.args)]
    if len(pipeline) != 2:
        return
    generator, pipe = pipeline
    if generator.poll() is None:
        generator.terminate()
    try:
        pipe.wait(15)
    except subprocess.TimeoutExpired:
        pass


# `make up` passes the moment it was typed, so the first-run times include everything before this
# process too (make, the venv check, Python's start).
STARTED_AT_ENV = "UP_STARTED_AT"
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
# `iot-platform dbt build` without unit tests (CI runs those), as dbt itself: `up` has the database's
# POSTGRES_* environment already, and on a busy machine the CLI's own start costs seconds.
FIRST_DBT_BUILD = [
    str(Path(PYTHON).with_name("dbt")), "build", "--exclude-resource-type", "unit_test",
    "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
]  # fmt: skip


def _say(line: str) -> None:
    """A line of its own, also when the simulator's live progress line is on the terminal."""
    print(("\r\x1b[K" if sys.stdout.isatty() else "") + line, flush=True)


class FirstRun:
    """A newcomer's first minutes, timed from `make up`: the first event this run stored, then the
    first dbt build of the analytics models, started as soon as there is data to build from (not at
    the first hourly run, up to an hour later), and when it finished. Dagster starts meanwhile;
    neither waits for the other (measured on 2 busy cores, waiting for one shared dbt parse made
    the first build later, not sooner)."""

    def __init__(self, started_at: float, target, spawn, log: Path) -> None:
        self.started_at = started_at
        self.target = target
        self.spawn = spawn
        self.log = log
        self.first_event_at: float | None = None
        self.build: subprocess.Popen | None = None
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


def cmd_up(args: argparse.Namespace) -> int:
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
    logs.mkdir(parents=True, exist_ok=True)

    services: list[subprocess.Popen] = []  # run until Ctrl-C; one exiting stops `up`
    tasks: list[subprocess.Popen] = []  # run to completion (the first dbt build, the manifest)

    def spawn(
        name: str, cmd: list[str], extra_env: dict[str, str] | None = None, *, task: bool = False
    ) -> subprocess.Popen:
        log_file = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            env={**env, **(extra_env or {})},
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        (tasks if task else services).append(proc)
        return proc

    api_url = f"http://127.0.0.1:{args.port}"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # A supervisor's SIGTERM or a closed terminal stops everything just like Ctrl-C.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    try:
        # The first dbt build starts once the first event is stored, seconds after the API answers:
        # the API tells analytics clients when to expect it ("not built yet, first build at ...").
        due = datetime.fromtimestamp(time.time() + FIRST_BUILD_EXPECTED_AFTER_SECONDS, UTC).isoformat()
        serve = [PYTHON, "-m", "ingest_service.cli", "serve", "--port", str(args.port), "--no-migrate"]
        api = spawn("api", serve, {"ANALYTICS_FIRST_BUILD_AT": due, **(buffered or {})})
        wait_ready(api_url + "/readyz", process=api)
        doors = _start_doors(settings, api_url, spawn)
        if buffered:
            spawn("writer", [PYTHON, "-m", "ingest_service.cli", "writer"], buffered)
            doors += "\n" + buffer_line + ", 1 writer (writer.log)"
        # The simulator streams as soon as the API answers: nothing of it waits for Dagster.
        generator, pipe = publisher_pipeline(
            api_url + "/ingest",
            _generator_args(args),
            [
                "--batch",
                str(args.batch),
                "--linger-ms",
                "200",
                "--progress",
                "--dead-letter",
                str(logs / "undelivered.ndjson"),
            ],
            env=env,
            own_session=True,
        )
        services.extend([generator, pipe])
        first_run = FirstRun(started_at, target, spawn, logs / "dbt-first-build.log")
        dagster = _extra_services(args, env, spawn)
        where = f"embedded PostgreSQL 16, data in {embedded_data_dir(settings)}" if target.embedded else "DATABASE_URL"
        print(
            f"\nIoT platform is up (API ready {time.time() - started_at:.1f} s after `make up`)\n"
            f"  database      {where}\n"
            f"                {target.url}\n"
            f"  ingest API    {api_url}/ingest   (docs {api_url}/docs, metrics {api_url}/metrics)\n"
            f"  doors         {doors}\n"
            f"  dashboard     {api_url}/dashboard   (analytics API {api_url}/analytics/)\n"
            f"  logs          {logs}/\n"
            f"  simulator     {args.devices} devices at {args.rate:g} events/s, "
            f"{args.new_firmware_share:.0%} on the new mm firmware\n"
            + ("  Dagster       starting (UI and schedule announced below)\n" if dagster else "")
            + "The first dbt build of the analytics models starts once the first event is stored.\n"
            "Ctrl-C stops everything; the data stays for the next `make up`.\n",
            flush=True,
        )
        while all(p.poll() is None for p in services):
            for line in first_run.poll() + (dagster.poll(started_at) if dagster else []):
                _say(line)
            time.sleep(0.25)
        failed = [p.args for p in services if p.poll() not in (None, 0)]
        if failed:
            print(f"\nstopped: a process exited: {failed[0]!r} (see {logs}/)", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        print("\nstopping: the simulator first, so the pipe can deliver what it has read...", file=sys.stderr)
        _drain_publisher(services)
        return 0
    finally:
        # A second Ctrl-C must not abandon the clean-up half-way and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(services + tasks)
        if target.embedded and not pg_was_running:
            stop_embedded(settings)


def _start_doors(settings: Settings, api_url: str, spawn) -> str:
    """The ingest doors besides HTTP (docs/mqtt.md): the MQTT bridge when MQTT_URL is set."""
    if not settings.mqtt_url:
        return f"HTTP {api_url}/ingest; MQTT off (set MQTT_URL)"
    from ingest_service.mqtt.bridge import BrokerAddress

    try:
        broker = BrokerAddress.from_url(settings.mqtt_url)
    except ValueError as exc:
        return f"HTTP {api_url}/ingest; MQTT off: {exc}"
    spawn("mqtt", [PYTHON, "-m", "ingest_service.cli", "mqtt", "--no-migrate"])
    prefix = settings.mqtt_topic_prefix
    return f"HTTP {api_url}/ingest; MQTT {broker} {prefix}/+/telemetry, {prefix}/+/startup (log: mqtt.log)"


def _extra_services(args: argparse.Namespace, env: dict[str, str], spawn):
    """Services other parts of the platform add to `up` (Dagster, when installed): an object whose
    poll(started_at) advances their start and returns lines to print."""
    try:
        from orchestration.lib.launch import DagsterStartup
    except ImportError:
        return None
    return DagsterStartup(args, env, spawn)


def cmd_writer(args: argparse.Namespace) -> int:
    from ingest_service.buffer import writer
    from ingest_service.core.logging import configure_json_logging

    settings = Settings()  # like serve: a writer checks provisioning tokens, so it needs the real secret
    configure_json_logging(settings.log_level)
    return writer.main(settings, args.metrics_port)


def _add_simulator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=50, help="simulated devices (default 50)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many events")
    parser.add_argument("--seed", type=int, default=None, help="random seed for a reproducible stream")
    parser.add_argument("--new-firmware-share", type=float, default=0.3, help="devices on mm firmware at start")
    parser.add_argument("--upgrade-rate", type=float, default=0.002, help="chance per event that a device upgrades")
    parser.add_argument("--batch", type=int, default=200, help="events per POST")


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve the ingest API (migrates first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="uvicorn worker processes (default: $WEB_CONCURRENCY, else one per two CPU cores)",
    )
    serve.add_argument("--log-level", default="warning")
    serve.add_argument("--no-migrate", action="store_true", help="skip `alembic upgrade head` at start")
    serve.set_defaults(func=cmd_serve)

    writer = sub.add_parser(
        "writer", help="store buffered requests from NATS JetStream in PostgreSQL (INGEST_BUFFER=jetstream)"
    )
    writer.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
    writer.set_defaults(func=cmd_writer)

    publish = sub.add_parser("publish", help="stream the device simulator into a running API")
    publish.add_argument("--url", default="http://127.0.0.1:8000/ingest")
    _add_simulator_options(publish)
    publish.set_defaults(func=cmd_publish)

    up = sub.add_parser("up", help="database + migrations + API + simulator (+ Dagster): the whole platform")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--dagster-port", type=int, default=3000)
    _add_simulator_options(up)
    up.set_defaults(func=cmd_up)
