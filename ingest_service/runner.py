"""Long-running commands: serve the API, publish simulated devices, bring the whole platform up."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx

from ingest_service.core.config import PROJECT_ROOT, Settings
from ingest_service.core.database import embedded_data_dir, resolve_target, stop_embedded, tool_environment

PYTHON = sys.executable
# `up` builds the analytics models once without waiting for the first scheduled run, at a time fixed
# when it starts, so the API can say when ("not built yet, first build at ...").
FIRST_BUILD_DELAY_SECONDS = 60.0
FIRST_BUILD_AT = (
    "import subprocess, sys, time; time.sleep(max(0.0, float(sys.argv[1]) - time.time())); "
    "sys.exit(subprocess.call(sys.argv[2:]))"
)


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
        migrate.upgrade(target)
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
    pipeline = [p for p in started if "publisher." in " ".join(map(str, p.args))]
    if len(pipeline) != 2:
        return
    generator, pipe = pipeline
    if generator.poll() is None:
        generator.terminate()
    try:
        pipe.wait(15)
    except subprocess.TimeoutExpired:
        pass


def cmd_up(args: argparse.Namespace) -> int:
    from ingest_service.core import migrate

    settings = _dev_settings()
    pg_was_running = (embedded_data_dir(settings) / "postmaster.pid").exists()
    target = resolve_target(settings)
    migrate.upgrade(target)
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

    started: list[subprocess.Popen] = []

    def spawn(name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log_file = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            cmd,
            cwd=PROJECT_ROOT,
            env={**env, **(extra_env or {})},
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    api_url = f"http://127.0.0.1:{args.port}"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # A supervisor's SIGTERM or a closed terminal stops everything just like Ctrl-C.
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    try:
        first_build_at = time.time() + FIRST_BUILD_DELAY_SECONDS
        due = {"ANALYTICS_FIRST_BUILD_AT": datetime.fromtimestamp(first_build_at, UTC).isoformat()}
        serve = [PYTHON, "-m", "ingest_service.cli", "serve", "--port", str(args.port), "--no-migrate"]
        api = spawn("api", serve, {**due, **(buffered or {})})
        wait_ready(api_url + "/readyz", process=api)
        doors = _start_doors(settings, api_url, spawn)
        extras = _extra_services(args, env, spawn)
        if buffered:
            spawn("writer", [PYTHON, "-m", "ingest_service.cli", "writer"], buffered)
            extras.append(buffer_line + ", 1 writer (writer.log)")
        first_build = spawn(
            "dbt-first-build",
            [
                PYTHON,
                "-c",
                FIRST_BUILD_AT,
                str(first_build_at),
                PYTHON,
                "-m",
                "ingest_service.cli",
                "dbt",
                "build",
                "--exclude-resource-type",
                "unit_test",
            ],
        )
        where = f"embedded PostgreSQL 16, data in {embedded_data_dir(settings)}" if target.embedded else "DATABASE_URL"
        print(
            f"\nIoT platform is up\n"
            f"  database      {where}\n"
            f"                {target.url}\n"
            f"  ingest API    {api_url}/ingest   (docs {api_url}/docs, metrics {api_url}/metrics)\n"
            f"  doors         {doors}\n"
            f"  dashboard     {api_url}/dashboard   (analytics API {api_url}/analytics/)\n"
            f"  logs          {logs}/   (first dbt build of the analytics models at "
            f"{datetime.fromtimestamp(first_build_at, UTC):%H:%M:%S} UTC: dbt-first-build.log)\n"
            + "".join(line + "\n" for line in extras)
            + f"  simulator     {args.devices} devices at {args.rate:g} events/s, "
            f"{args.new_firmware_share:.0%} on the new mm firmware\n"
            f"Ctrl-C stops everything; the data stays for the next `make up`.\n",
            flush=True,
        )
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
        started += [generator, pipe]
        services = [p for p in started if p is not first_build]
        while all(p.poll() is None for p in services):
            time.sleep(0.5)
        failed = [p.args for p in services if p.poll() not in (None, 0)]
        if failed:
            print(f"\nstopped: a process exited: {failed[0]} (see {logs}/)", file=sys.stderr)
            return 1
        return 0
    except KeyboardInterrupt:
        print("\nstopping: the simulator first, so the pipe can deliver what it has read...", file=sys.stderr)
        _drain_publisher(started)
        return 0
    finally:
        # A second Ctrl-C must not abandon the clean-up half-way and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop(started)
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


def _extra_services(args: argparse.Namespace, env: dict[str, str], spawn) -> list[str]:
    """Services other parts of the platform add to `up` (Dagster, when installed)."""
    try:
        from orchestration.lib.launch import start_dagster
    except ImportError:
        return []
    return start_dagster(args, env, spawn)


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
