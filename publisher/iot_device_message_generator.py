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

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import TextIO  # noqa: E402

from publisher.events import UNPACED_STEP_SECONDS, EventGenerator, FleetConfig, SimulatedClock  # noqa: E402
from publisher.settings import GeneratorSettings, SettingsError  # noqa: E402


def build_parser(defaults: GeneratorSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iot_device_message_generator",
        description="Print simulated IoT device events, one JSON object per line, on stdout.",
        epilog="Each option's default comes from the environment variable in brackets, else the value shown.",
    )
    add = parser.add_argument
    add(
        "--devices",
        type=int,
        default=defaults.devices,
        help="legacy devices, ids 1..N [GENERATOR_DEVICES] (%(default)s)",
    )
    add(
        "--rate",
        type=float,
        default=defaults.rate,
        help="events per second; 0 = as fast as possible [GENERATOR_RATE] (%(default)s)",
    )
    add(
        "--count",
        type=int,
        default=defaults.count,
        help="stop after this many events; default unbounded [GENERATOR_COUNT]",
    )
    add(
        "--seed",
        type=int,
        default=defaults.seed,
        help="random seed: reproducible values and a simulated clock (1/rate s per event) [GENERATOR_SEED]",
    )
    add(
        "--start-time",
        type=float,
        default=defaults.start_time,
        metavar="EPOCH",
        help="simulated clock start in epoch seconds (implies the simulated clock); with --seed the output "
        "is byte-identical across runs; default: now [GENERATOR_START_TIME]",
    )
    add(
        "--malformed-prob",
        type=float,
        default=defaults.malformed_prob,
        help="share of deliberately malformed events [GENERATOR_MALFORMED_PROB] (%(default)s)",
    )
    add(
        "--new-firmware-share",
        type=float,
        default=defaults.new_firmware_share,
        metavar="F",
        help="enable the rollout: share of devices on the new mm firmware from the start; the others emit "
        "ticks. Unset (and no --upgrade-rate): every device emits both formats, as the seed generator "
        "did [GENERATOR_NEW_FIRMWARE_SHARE]",
    )
    add(
        "--upgrade-rate",
        type=float,
        default=defaults.upgrade_rate,
        help="per event, probability that the chosen legacy device upgrades: it sends a signed "
        "device_startup naming its id, then emits mm [GENERATOR_UPGRADE_RATE] (%(default)s)",
    )
    add(
        "--provisioned-devices",
        type=int,
        default=defaults.provisioned_devices,
        metavar="K",
        help="brand-new devices: K signed device_startup events without device_id at the start of the "
        "stream, and no telemetry from them (a pipe cannot learn the id the API assigns) "
        "[GENERATOR_PROVISIONED_DEVICES] (%(default)s)",
    )
    add(
        "--firmware",
        default=defaults.firmware,
        help="firmware version sent in device_startup [GENERATOR_FIRMWARE] (%(default)s)",
    )
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if args.rate < 0:
        parser.error("--rate must not be negative")
    if args.count is not None and args.count < 0:
        parser.error("--count must not be negative")
    if args.provisioned_devices < 0:
        parser.error("--provisioned-devices must not be negative")
    for name in ("malformed_prob", "upgrade_rate", "new_firmware_share"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:
            parser.error(f"--{name.replace('_', '-')} must be within 0..1")


def emit(events: EventGenerator, out: TextIO, count: int | None, rate: float) -> int:
    """Write `count` events (or forever) at `rate` per second; returns how many were written."""
    interval = 1.0 / rate if rate > 0 else 0.0
    # Pace against a schedule, not sleep(interval) after each write, so slow writes don't lower the rate.
    deadline = time.monotonic()
    written = 0
    for event in events:
        if count is not None and written >= count:
            break
        if interval:
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            deadline = max(deadline + interval, time.monotonic() - interval)
        out.write(json.dumps(event) + "\n")
        out.flush()
        written += 1
    return written


def main(argv: Sequence[str] | None = None) -> int:
    try:
        defaults = GeneratorSettings.from_env()
    except SettingsError as exc:
        print(f"invalid environment: {exc}", file=sys.stderr)
        return 2
    parser = build_parser(defaults)
    args = parser.parse_args(argv)
    check_args(parser, args)

    config = FleetConfig(
        devices=args.devices,
        malformed_prob=args.malformed_prob,
        new_firmware_share=args.new_firmware_share,
        upgrade_rate=args.upgrade_rate,
        provisioned_devices=args.provisioned_devices,
        secret=defaults.provision_secret,
        firmware=args.firmware,
    )
    rng = random.Random(args.seed)
    if args.seed is not None or args.start_time is not None:
        start = args.start_time if args.start_time is not None else time.time()
        clock = SimulatedClock(start, 1.0 / args.rate if args.rate > 0 else UNPACED_STEP_SECONDS)
    else:
        clock = time.time
    generator = EventGenerator(config, rng, clock)

    count = "unbounded" if args.count is None else args.count
    rollout = "on" if config.rollout else "off"
    print(
        f"generator: {args.devices} devices, rate {args.rate or 'unpaced'}/s, count {count}, "
        f"seed {args.seed}, rollout {rollout}",
        file=sys.stderr,
    )
    try:
        emit(generator, sys.stdout, args.count, args.rate)
    except KeyboardInterrupt:
        print("generator stopped", file=sys.stderr)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
