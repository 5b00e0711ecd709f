#!/usr/bin/env python3
"""The device simulator delivering to the platform itself: generator -> batches -> transport.

Unlike `iot_device_message_generator | pipe_to_api`, it reads the platform's answers, so a brand-new
device (`--provisioned-devices`) learns the id the API assigns in its `provisioned` answer and then
reports telemetry under that id. Takes the generator's options and the pipe's; exit status as
pipe_to_api's. Ctrl-C or SIGTERM stops generating and delivers what was generated (a second one
interrupts: unsent lines go to the dead letter). See docs/publisher.md.
"""

from __future__ import annotations

import sys

if not __package__:
    # Run as `python publisher/simulate.py`: put the repo root, not publisher/, first on the path.
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from typing import TextIO  # noqa: E402

from publisher.delivery.items import Line, Outcome  # noqa: E402
from publisher.delivery.pipe import Pipe, ResultHook  # noqa: E402
from publisher.events import EventGenerator  # noqa: E402
from publisher.iot_device_message_generator import banner, build_generator  # noqa: E402
from publisher.pacing import paced  # noqa: E402
from publisher.settings import GeneratorSettings, PipeSettings, parse_args  # noqa: E402


def learn_provisioned_ids(generator: EventGenerator) -> ResultHook:
    """A result hook: each `provisioned` answer to a startup without device_id names a new device's id."""

    def hook(line: Line, outcome: Outcome) -> None:
        if isinstance(outcome, dict) and outcome.get("status") == "provisioned":
            device_id = outcome.get("device_id")
            event = json.loads(line.raw)
            if isinstance(device_id, int) and "device_id" not in event:
                generator.provisioned(event.get("serial"), device_id)

    return hook


def lines(generator: EventGenerator, settings: GeneratorSettings, stop: threading.Event) -> Iterator[bytes]:
    for event in paced(generator, settings.count, settings.rate, stop):
        yield json.dumps(event).encode()


def _stop_generating_on_signal(stop: threading.Event) -> None:
    """The first Ctrl-C / SIGTERM ends the stream (what was generated is still delivered); a second interrupts."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parsed = parse_args(
        argv,
        prog="simulate",
        description="Simulate the device fleet and deliver its events to the platform, reading the answers.",
        models=[GeneratorSettings, PipeSettings],
    )
    fleet, delivery = parsed[GeneratorSettings], parsed[PipeSettings]
    generator = build_generator(fleet)
    stop = threading.Event()
    pipe = Pipe(
        delivery,
        lines(generator, fleet, stop),
        stderr,
        name="simulate",
        on_result=learn_provisioned_ids(generator),
    )
    pipe.console.log(f"{banner(fleet)}, {fleet.provisioned_devices} provisioned, to {delivery.destination}")
    _stop_generating_on_signal(stop)
    status = pipe.run()
    pipe.report(stdout)
    if fleet.provisioned_devices:
        reporting = len(generator.provisioned_ids)
        pipe.console.log(f"{reporting} of {fleet.provisioned_devices} provisioned devices got their id")
    return status


if __name__ == "__main__":
    sys.exit(main())
