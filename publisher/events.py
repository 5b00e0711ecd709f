"""Simulated device fleet: yields the events the seed generator prints, plus a firmware rollout.

Pure: randomness comes from the `random.Random` it is given and time from the clock it is given,
so a seeded generator with a simulated clock always yields the same events.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from argparse import SUPPRESS
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

TICKS = "platform_extension_ticks"
MM = "platform_extension_mm"
BATTERY = "battery_charge"
HEIGHT = "platform_height_mm"
STARTUP = "device_startup"
EVENT_TYPES = (TICKS, MM, BATTERY, HEIGHT)
EXTENSION_TYPES = (TICKS, MM)

# The development secret the API accepts in dev mode (ingest_service.core.config.DEV_PROVISION_SECRET).
DEV_PROVISION_SECRET = "dev-secret"
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


def _share(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError("must be within 0..1")
    return value


Share = Annotated[float, AfterValidator(_share)]


class FleetConfig(BaseModel):
    """The fleet's options (`publisher.settings.GeneratorSettings` reads them from the environment and
    the command line)."""

    model_config = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True)

    devices: int = Field(5, ge=1, description="legacy devices, ids 1..N")
    malformed_prob: Share = Field(0.1, description="share of deliberately malformed events")
    # None: the seed's behaviour, every device emits both extension formats at random.
    # A number: that share of devices runs the new mm firmware, the rest the legacy ticks firmware.
    new_firmware_share: Share | None = Field(
        None,
        description="enable the rollout: share of devices on the new mm firmware from the start; the others "
        "emit ticks. Unset (and no --upgrade-rate): every device emits both formats, as the seed generator did",
    )
    upgrade_rate: Share = Field(
        0.0,
        description="per event, probability that the chosen legacy device upgrades: it sends a signed "
        "device_startup naming its id, then emits mm",
    )
    provisioned_devices: int = Field(
        0,
        ge=0,
        description="brand-new devices: K signed device_startup events without device_id open the stream; "
        "under publisher.simulate each then reports (in mm) with the device_id the API assigned, while a "
        "plain pipe cannot learn that id and they stay silent",
    )
    # Shared with the API, hence PROVISION_SECRET; never a visible option (it would show in `ps`).
    secret: str = Field(DEV_PROVISION_SECRET, validation_alias="PROVISION_SECRET", repr=False, description=SUPPRESS)
    firmware: str = Field("2.0.0", description="firmware version sent in device_startup")

    @property
    def rollout(self) -> bool:
        """Whether devices have a firmware (and so one extension format) of their own."""
        return self.new_firmware_share is not None or self.upgrade_rate > 0


class EventGenerator:
    """A fleet of devices `1..devices`, plus the provisioned ones once the API has assigned their ids;
    iterate it for an endless stream of events."""

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
        # Brand-new devices, by the id the API assigned, in the order it answered. Appended from the
        # thread that reads the answers while another iterates: a list only grows, so a reader that
        # took its length can index it.
        self.provisioned_ids: list[int] = []
        self._provisioned_serials = {provisioned_serial(i) for i in range(1, config.provisioned_devices + 1)}
        self._assigned: dict[str, int] = {}
        self._brand_new: set[int] = set()

    def provisioned(self, serial: str, device_id: int) -> None:
        """The API answered `provisioned` with `device_id` for one of this fleet's brand-new devices:
        from now on that device reports telemetry under that id."""
        if serial in self._provisioned_serials and serial not in self._assigned:
            self._assigned[serial] = device_id
            self._brand_new.add(device_id)
            self.provisioned_ids.append(device_id)

    def firmware_format(self, device_id: int) -> str | None:
        """The extension type a device emits, or None when it emits both (no rollout)."""
        if device_id in self._brand_new:
            return MM  # brand-new hardware runs the new firmware
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
        # Without provisioned ids this is randint(1, devices), so seeded streams stay as they were.
        pick = rng.randint(1, cfg.devices + len(self.provisioned_ids))
        legacy = pick <= cfg.devices
        device_id = pick if legacy else self.provisioned_ids[pick - cfg.devices - 1]
        if rng.random() < cfg.malformed_prob:
            return malformed_event(device_id, rng)
        if legacy and cfg.upgrade_rate and device_id not in self.new_firmware and rng.random() < cfg.upgrade_rate:
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
