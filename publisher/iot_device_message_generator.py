#!/usr/bin/env python3
"""IoT device event stream generator: one JSON event per line on stdout.

Simulates the fleet's heterogeneous telemetry (legacy `platform_extension_ticks`, new
`platform_extension_mm`, `battery_charge`, `platform_height_mm`), ~10% malformed events on purpose,
and optionally a firmware rollout with signed `device_startup` events. See docs/publisher.md.
"""

from __future__ import annotations

import sys

if not __package__:
    # Run as `python publisher/iot_device_message_generator.py`: put the repo root, not publisher/,
    # first on the path, so `publisher.*` imports and publisher/ modules cannot shadow top-level ones.
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import TextIO  # noqa: E402

from publisher.events import UNPACED_STEP_SECONDS, Clock, EventGenerator, SimulatedClock  # noqa: E402
from publisher.pacing import paced  # noqa: E402
from publisher.settings import GeneratorSettings, parse_args  # noqa: E402


def build_generator(settings: GeneratorSettings) -> EventGenerator:
    """The fleet with its random source and clock: simulated (reproducible) with a seed or a start time."""
    clock: Clock = time.time
    if settings.seed is not None or settings.start_time is not None:
        start = settings.start_time if settings.start_time is not None else time.time()
        clock = SimulatedClock(start, 1.0 / settings.rate if settings.rate > 0 else UNPACED_STEP_SECONDS)
    return EventGenerator(settings, random.Random(settings.seed), clock)


def banner(settings: GeneratorSettings) -> str:
    count = "unbounded" if settings.count is None else settings.count
    return (
        f"{settings.devices} devices, rate {settings.rate or 'unpaced'}/s, count {count}, "
        f"seed {settings.seed}, rollout {'on' if settings.rollout else 'off'}"
    )


def emit(events: EventGenerator, out: TextIO, count: int | None, rate: float) -> int:
    """Write `count` events (or forever) at `rate` per second; returns how many were written."""
    written = 0
    for event in paced(events, count, rate):
        out.write(json.dumps(event) + "\n")
        out.flush()
        written += 1
    return written


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(
        argv,
        prog="iot_device_message_generator",
        description="Print simulated IoT device events, one JSON object per line, on stdout.",
        models=[GeneratorSettings],
    )[GeneratorSettings]
    print(f"generator: {banner(settings)}", file=sys.stderr)
    try:
        emit(build_generator(settings), sys.stdout, settings.count, settings.rate)
    except KeyboardInterrupt:
        print("generator stopped", file=sys.stderr)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
