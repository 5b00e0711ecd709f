"""Simulated device fleet: yields the events the seed generator prints, plus a firmware rollout.

Pure: randomness comes from the `random.Random` it is given and time from the clock it is given,
so a seeded generator with a simulated clock always yields the same events.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

TICKS = "platform_extension_ticks"
MM = "platform_extension_mm"
BATTERY = "battery_charge"
HEIGHT = "platform_height_mm"
STARTUP = "device_startup"
EVENT_TYPES = (TICKS, MM, BATTERY, HEIGHT)
EXTENSION_TYPES = (TICKS, MM)

# Without a rate there is no natural step; 1 ms keeps a fast simulated run close to wall time.
UNPACED_STEP_SECONDS = 0.001

Event = dict[str, Any]
Clock = Callable[[], float]


def provision_token(secret: str, serial: str) -> str:
    """hex(HMAC-SHA256(secret, serial)): what the API checks on `device_startup`."""
    return hmac.new(secret.encode(), serial.encode(), hashlib.sha256).hexdigest()


def legacy_serial(device_id: int) -> str:
    return f"SN-{device_id:06d}"


def provisioned_serial(index: int) -> str:
    # A separate namespace, so a brand-new device never claims the serial of an upgraded legacy one.
    return f"SN-P{index:06d}"


def telemetry_value(event_type: str, rng: random.Random) -> int | float:
    """A value in the seed generator's range for the type."""
    if event_type == TICKS:
        return rng.randint(0, 3000)
    if event_type == MM:
        return rng.randint(-150, 150)
    if event_type == BATTERY:
        return round(rng.uniform(10, 100), 1)
    if event_type == HEIGHT:
        return rng.randint(0, 200)
    raise ValueError(f"unknown event type {event_type!r}")


def malformed_event(device_id: int, rng: random.Random) -> Event:
    """One of the seed generator's deliberately broken shapes."""
    shapes: tuple[Event, ...] = (
        {},
        {"device_id": device_id},
        {"event_type": MM},
        {"event_type": BATTERY, "value": "high"},
        {"device_id": device_id, "value": 123},
    )
    return dict(rng.choice(shapes))


def startup_event(serial: str, timestamp: float, secret: str, firmware: str, device_id: int | None = None) -> Event:
    event: Event = {
        "event_type": STARTUP,
        "serial": serial,
        "provision_token": provision_token(secret, serial),
        "timestamp": timestamp,
        "firmware": firmware,
    }
    if device_id is not None:
        event["device_id"] = device_id
    return event


class SimulatedClock:
    """Epoch seconds that advance a fixed step per reading: reproducible timestamps."""

    def __init__(self, start: float, step: float) -> None:
        self.start = start
        self.step = step
        self.ticks = 0

    def __call__(self) -> float:
        # start + n*step rather than a running sum, so rounding error never accumulates.
        now = round(self.start + self.ticks * self.step, 6)
        self.ticks += 1
        return now


@dataclass(frozen=True, slots=True)
class FleetConfig:
    devices: int = 5
    malformed_prob: float = 0.1
    # None: the seed's behaviour, every device emits both extension formats at random.
    # A number: that share of devices runs the new mm firmware, the rest the legacy ticks firmware.
    new_firmware_share: float | None = None
    upgrade_rate: float = 0.0
    provisioned_devices: int = 0
    secret: str = "dev-secret"
    firmware: str = "2.0.0"

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("devices must be at least 1")
        for name in ("malformed_prob", "upgrade_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within 0..1")
        if self.new_firmware_share is not None and not 0 <= self.new_firmware_share <= 1:
            raise ValueError("new_firmware_share must be within 0..1")
        if self.provisioned_devices < 0:
            raise ValueError("provisioned_devices must not be negative")

    @property
    def rollout(self) -> bool:
        """Whether devices have a firmware (and so one extension format) of their own."""
        return self.new_firmware_share is not None or self.upgrade_rate > 0


class EventGenerator:
    """A fleet of devices `1..devices`; iterate it for an endless stream of events."""

    def __init__(self, config: FleetConfig, rng: random.Random, clock: Clock) -> None:
        self.config = config
        self.rng = rng
        self.clock = clock
        self.new_firmware: set[int] = set()
        if config.rollout:
            share = config.new_firmware_share or 0.0
            ids = range(1, config.devices + 1)
            self.new_firmware = set(rng.sample(ids, round(share * config.devices)))
        self.upgraded: list[int] = []

    def firmware_format(self, device_id: int) -> str | None:
        """The extension type a device emits, or None when it emits both (no rollout)."""
        if not self.config.rollout:
            return None
        return MM if device_id in self.new_firmware else TICKS

    def __iter__(self) -> Iterator[Event]:
        cfg = self.config
        for index in range(1, cfg.provisioned_devices + 1):
            yield startup_event(provisioned_serial(index), self.clock(), cfg.secret, cfg.firmware)
        while True:
            yield self.next_event()

    def next_event(self) -> Event:
        cfg, rng = self.config, self.rng
        # Read once per event, malformed ones included, so the simulated clock steps once per line.
        now = self.clock()
        device_id = rng.randint(1, cfg.devices)
        if rng.random() < cfg.malformed_prob:
            return malformed_event(device_id, rng)
        if cfg.upgrade_rate and device_id not in self.new_firmware and rng.random() < cfg.upgrade_rate:
            self.new_firmware.add(device_id)
            self.upgraded.append(device_id)
            return startup_event(legacy_serial(device_id), now, cfg.secret, cfg.firmware, device_id)
        event_type = rng.choice(EVENT_TYPES)
        # The seed's mix is kept (extension is half the traffic); only its format follows the firmware.
        device_format = self.firmware_format(device_id)
        if device_format is not None and event_type in EXTENSION_TYPES:
            event_type = device_format
        return {
            "device_id": device_id,
            "event_type": event_type,
            "value": telemetry_value(event_type, rng),
            "timestamp": now,
        }
