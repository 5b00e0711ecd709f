"""The long-running services: `serve` (the ingest API), `writer` (buffered ingest), `mqtt` (the MQTT
door) and `publish` (the device simulator), each a command that runs one process in the foreground."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import click

from ingest_service.core.config import Settings
from platform_cli.processes import python_module, start


def default_workers() -> int:
    """WEB_CONCURRENCY when set (the uvicorn/gunicorn convention), else one worker per two cores:
    PostgreSQL usually shares the machine and spends more CPU per event than the API (3x on
    batches), and on 2 cores one worker measured best (docs/performance.md)."""
    configured = os.environ.get("WEB_CONCURRENCY", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return max(1, (os.cpu_count() or 1) // 2)


no_migrate_option = click.option("--no-migrate", is_flag=True, help="skip `alembic upgrade head` at start")


@click.command(help="serve the ingest API (migrates first)")
@click.option("--host", default="127.0.0.1", help="address to listen on")
@click.option("--port", type=int, default=8000, help="port to listen on")
@click.option(
    "--workers",
    type=int,
    default=default_workers,
    show_default="$WEB_CONCURRENCY, else one per two CPU cores",
    help="uvicorn worker processes",
)
@click.option("--log-level", default="warning", help="uvicorn's own log level (the API's: LOG_LEVEL)")
@no_migrate_option
def serve(host: str, port: int, workers: int, log_level: str, no_migrate: bool) -> int:
    import uvicorn

    from ingest_service.core import migrate
    from ingest_service.core.database import resolve_target
    from ingest_service.core.logging import configure_json_logging
    from ingest_service.core.server import prepare_server

    # No dev-mode default here: a production `serve` without a real PROVISION_SECRET refuses to start.
    settings = Settings()
    configure_json_logging(settings.log_level)
    target = resolve_target(settings)
    os.environ["DATABASE_URL"] = target.url  # workers resolve the same server without starting another
    if not no_migrate:
        migrate.upgrade(target, settings.retention_days)
        if settings.ingest_buffer == "jetstream":
            from ingest_service.buffer.stream import ensure_stream_sync

            ensure_stream_sync(settings)
    if workers > 1:
        # Each worker is its own process: prometheus-client's multiprocess mode sums their metrics.
        metrics_dir = settings.data_dir / "prometheus" / str(port)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run(
        "ingest_service.main:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        log_config=None,  # keep the JSON logging configured above
        access_log=False,
        timeout_graceful_shutdown=30,
        **prepare_server(settings, workers),
    )
    return 0


@click.command(help="store buffered requests from NATS JetStream in PostgreSQL (INGEST_BUFFER=jetstream)")
@click.option("--metrics-port", type=int, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
def writer(metrics_port: int | None) -> int:
    from ingest_service.buffer import writer as buffer_writer
    from ingest_service.core.logging import configure_json_logging

    settings = Settings()  # like serve: a writer checks provisioning tokens, so it needs the real secret
    configure_json_logging(settings.log_level)
    return buffer_writer.main(settings, metrics_port)


@click.command(help="the MQTT door: store devices/+/telemetry and devices/+/startup messages, publish results")
@no_migrate_option
def mqtt(no_migrate: bool) -> int:
    from ingest_service.core import migrate
    from ingest_service.core.database import resolve_target
    from ingest_service.core.logging import configure_json_logging
    from ingest_service.mqtt.bridge import BridgeFailed, BrokerAddress, serve
    from ingest_service.mqtt.topics import Topics

    settings = Settings()
    configure_json_logging(settings.log_level)
    if not settings.mqtt_url:
        print("iot-platform mqtt: set MQTT_URL (e.g. mqtt://bridge:password@127.0.0.1:1883)", file=sys.stderr)
        return 2
    try:
        broker = BrokerAddress.from_url(settings.mqtt_url)
    except ValueError as exc:
        print(f"iot-platform mqtt: {exc}", file=sys.stderr)
        return 2
    target = resolve_target(settings)
    if not no_migrate:
        migrate.upgrade(target, settings.retention_days)
    filters = ", ".join(Topics(settings.mqtt_topic_prefix).filters(settings.mqtt_shared_group or None))
    print(
        f"iot-platform mqtt: {broker} as {settings.mqtt_client_id}, {filters} -> {target.parts['dbname']}", flush=True
    )
    try:
        import uvloop

        uvloop.run(serve(settings, target.url))
    except BridgeFailed as exc:
        print(f"iot-platform mqtt: {exc}", file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class Fleet:
    """The simulated fleet `publish` and `up` stream (their shared options)."""

    devices: int
    rate: float
    count: int | None
    seed: int | None
    new_firmware_share: float
    upgrade_rate: float
    batch: int

    def generator_args(self) -> list[str]:
        out = ["--devices", str(self.devices), "--rate", str(self.rate)]
        if self.count is not None:
            out += ["--count", str(self.count)]
        if self.seed is not None:
            out += ["--seed", str(self.seed)]
        out += ["--new-firmware-share", str(self.new_firmware_share), "--upgrade-rate", str(self.upgrade_rate)]
        return out


_FLEET_OPTIONS = [
    click.option("--devices", type=int, default=50, help="simulated devices"),
    click.option("--rate", type=float, default=200.0, help="events per second"),
    click.option("--count", type=int, default=None, help="stop after this many events"),
    click.option("--seed", type=int, default=None, help="random seed for a reproducible stream"),
    click.option("--new-firmware-share", type=float, default=0.3, help="devices on mm firmware at start"),
    click.option("--upgrade-rate", type=float, default=0.002, help="chance per event that a device upgrades"),
    click.option("--batch", type=int, default=200, help="events per POST"),
]


def fleet_options(command: Callable[..., int]) -> Callable[..., int]:
    """Adds the simulator's options to a command, which receives them as `fleet: Fleet`."""

    @functools.wraps(command)
    def with_fleet(**kwargs: Any) -> int:
        fleet = Fleet(**{field.name: kwargs.pop(field.name) for field in fields(Fleet)})
        return command(fleet=fleet, **kwargs)

    for option in reversed(_FLEET_OPTIONS):
        with_fleet = option(with_fleet)
    return with_fleet


@click.command(help="stream the device simulator into a running API")
@click.option("--url", default="http://127.0.0.1:8000/ingest", help="the API's ingest URL")
@fleet_options
def publish(url: str, fleet: Fleet) -> int:
    # One process that reads the API's answers, so provisioned devices report under their assigned id.
    options = ["--url", url, *fleet.generator_args(), "--batch", str(fleet.batch), "--progress"]
    simulator = start(python_module("publisher.simulate", *options), own_session=False)
    try:
        return simulator.wait()
    except KeyboardInterrupt:
        # The simulator got the Ctrl-C too: it stops generating and delivers what it has generated.
        return simulator.wait()
