"""The device simulator: seed-compatible output, reproducibility, and the firmware rollout."""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from publisher.events import (
    BATTERY,
    EVENT_TYPES,
    HEIGHT,
    MM,
    STARTUP,
    TICKS,
    EventGenerator,
    FleetConfig,
    SimulatedClock,
)
from publisher.iot_device_message_generator import emit, main

REPO = Path(__file__).resolve().parents[2]
MALFORMED_SHAPES = [
    set(),
    {"device_id"},
    {"event_type"},
    {"event_type", "value"},
    {"device_id", "value"},
]
RANGES = {TICKS: (0, 3000), MM: (-150, 150), BATTERY: (10, 100), HEIGHT: (0, 200)}


def take(config: FleetConfig, n: int, seed: int = 7) -> list[dict]:
    generator = EventGenerator(config, random.Random(seed), SimulatedClock(1_700_000_000.0, 0.2))
    return list(itertools.islice(generator, n))


def is_telemetry(event: dict) -> bool:
    return set(event) == {"device_id", "event_type", "value", "timestamp"}


def run_cli(*args: str, module: bool = True) -> subprocess.CompletedProcess[bytes]:
    entry = (
        ["-m", "publisher.iot_device_message_generator"] if module else ["publisher/iot_device_message_generator.py"]
    )
    return subprocess.run([sys.executable, *entry, *args], cwd=REPO, capture_output=True, check=True, timeout=30)


def test_same_seed_same_events_and_different_seed_different_events() -> None:
    config = FleetConfig(new_firmware_share=0.4, upgrade_rate=0.01)
    assert take(config, 2000, seed=1) == take(config, 2000, seed=1)
    assert take(config, 2000, seed=1) != take(config, 2000, seed=2)


def test_cli_output_is_byte_identical_across_runs_and_entry_points() -> None:
    args = ("--seed", "42", "--start-time", "1700000000", "--count", "500", "--rate", "0", "--upgrade-rate", "0.01")
    first = run_cli(*args)
    second = run_cli(*args, module=False)
    assert first.stdout == second.stdout
    lines = first.stdout.decode().splitlines()
    assert len(lines) == 500
    # stdout is pure NDJSON: the banner goes to stderr.
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert b"generator:" in first.stderr


def test_simulated_clock_steps_one_interval_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "1", "--start-time", "1700000000", "--count", "200", "--rate", "1000"]) == 0
    stamps = [json.loads(line).get("timestamp") for line in capsys.readouterr().out.splitlines()]
    for index, stamp in enumerate(stamps):
        if stamp is not None:  # malformed events carry none, but still take their step
            assert stamp == pytest.approx(1_700_000_000 + index * 0.001, abs=1e-6)


def test_shapes_types_ranges_and_malformed_share() -> None:
    events = take(FleetConfig(devices=5), 20_000)
    telemetry = [e for e in events if is_telemetry(e)]
    malformed = [e for e in events if not is_telemetry(e)]
    assert 0.09 <= len(malformed) / len(events) <= 0.11
    assert all(set(e) in MALFORMED_SHAPES for e in malformed)
    assert {frozenset(e) for e in malformed} == {frozenset(s) for s in MALFORMED_SHAPES}
    assert all(e.get("value", "high") in ("high", 123) for e in malformed)

    types = Counter(e["event_type"] for e in telemetry)
    assert set(types) == set(EVENT_TYPES)
    assert all(n / len(telemetry) == pytest.approx(0.25, abs=0.02) for n in types.values())
    for e in telemetry:
        low, high = RANGES[e["event_type"]]
        assert low <= e["value"] <= high
        assert 1 <= e["device_id"] <= 5
        assert isinstance(e["timestamp"], float)
        if e["event_type"] == BATTERY:
            assert isinstance(e["value"], float) and round(e["value"], 1) == e["value"]
        else:
            assert isinstance(e["value"], int)
    # Without a rollout every device emits both extension formats, as the seed generator did.
    formats = defaultdict(set)
    for e in telemetry:
        if e["event_type"] in (TICKS, MM):
            formats[e["device_id"]].add(e["event_type"])
    assert all(f == {TICKS, MM} for f in formats.values())


def test_malformed_prob_option() -> None:
    assert all(is_telemetry(e) for e in take(FleetConfig(malformed_prob=0.0), 2000))
    assert not any(is_telemetry(e) for e in take(FleetConfig(malformed_prob=1.0), 2000))


def test_rollout_share_gives_each_device_one_format() -> None:
    events = take(FleetConfig(devices=10, new_firmware_share=0.4), 10_000)
    formats = defaultdict(set)
    for e in events:
        if is_telemetry(e) and e["event_type"] in (TICKS, MM):
            formats[e["device_id"]].add(e["event_type"])
    assert sorted(formats) == list(range(1, 11))
    assert all(len(f) == 1 for f in formats.values())
    assert sum(f == {MM} for f in formats.values()) == 4
    assert not any(e.get("event_type") == STARTUP for e in events)
    # The traffic mix stays the seed's: extension is half of the telemetry.
    telemetry = [e for e in events if is_telemetry(e)]
    share = sum(e["event_type"] in (TICKS, MM) for e in telemetry) / len(telemetry)
    assert share == pytest.approx(0.5, abs=0.03)


def test_upgrades_send_a_signed_startup_naming_the_legacy_id_then_switch_to_mm() -> None:
    secret = "s3cret"
    events = take(FleetConfig(devices=20, new_firmware_share=0.0, upgrade_rate=0.002, secret=secret), 5000)
    upgraded_at: dict[int, int] = {}
    for index, e in enumerate(events):
        if e.get("event_type") == STARTUP:
            device_id = e["device_id"]
            assert device_id not in upgraded_at, "a device upgrades once"
            upgraded_at[device_id] = index
            assert 1 <= device_id <= 20
            assert e["serial"] == f"SN-{device_id:06d}"
            expected = hmac.new(secret.encode(), e["serial"].encode(), hashlib.sha256).hexdigest()
            assert e["provision_token"] == expected
            assert e["firmware"] == "2.0.0"
            assert isinstance(e["timestamp"], float)
    assert 3 <= len(upgraded_at) < 15
    for index, e in enumerate(events):
        if is_telemetry(e) and e["event_type"] in (TICKS, MM):
            at = upgraded_at.get(e["device_id"])
            expected_type = MM if at is not None and index > at else TICKS
            assert e["event_type"] == expected_type


def test_upgrade_rate_alone_starts_every_device_on_legacy_firmware() -> None:
    events = take(FleetConfig(devices=5, upgrade_rate=0.0001), 3000)
    assert {e["event_type"] for e in events if is_telemetry(e)} == {TICKS, BATTERY, HEIGHT}


def test_provisioned_devices_open_the_stream_with_startups_without_device_id() -> None:
    events = take(FleetConfig(devices=5, provisioned_devices=3), 100)
    startups = events[:3]
    assert [e["serial"] for e in startups] == ["SN-P000001", "SN-P000002", "SN-P000003"]
    assert all(e["event_type"] == STARTUP and "device_id" not in e for e in startups)
    assert all(e.get("event_type") != STARTUP for e in events[3:])
    assert {e["device_id"] for e in events[3:] if "device_id" in e} <= set(range(1, 6))


def test_provisioned_devices_report_in_mm_under_their_assigned_id_once_known() -> None:
    config = FleetConfig(devices=5, provisioned_devices=2, new_firmware_share=0.0, upgrade_rate=0.01)
    generator = EventGenerator(config, random.Random(3), SimulatedClock(1_700_000_000.0, 0.2))
    events = iter(generator)
    startups = [next(events) for _ in range(2)]
    assert [e["serial"] for e in startups] == ["SN-P000001", "SN-P000002"]
    before = [next(events) for _ in range(1000)]
    assert {e["device_id"] for e in before if "device_id" in e} <= set(range(1, 6))

    assigned = 2**31 + 7
    generator.provisioned("SN-P000001", assigned)
    generator.provisioned("SN-P000001", 2**31 + 9)  # a repeated answer keeps the first id
    generator.provisioned("SN-000003", 2**31 + 8)  # not a brand-new device of this fleet: ignored
    after = [next(events) for _ in range(6000)]
    telemetry = [e for e in after if is_telemetry(e)]
    assert {e["device_id"] for e in telemetry} == {1, 2, 3, 4, 5, assigned}
    own = [e for e in telemetry if e["device_id"] == assigned]
    assert len(own) / len(telemetry) == pytest.approx(1 / 6, abs=0.03)
    # New hardware runs the new firmware: extension in mm only, and it never "upgrades".
    assert {e["event_type"] for e in own} == {MM, BATTERY, HEIGHT}
    upgrades = [e for e in after if e.get("event_type") == STARTUP]
    assert upgrades and all(e["device_id"] <= 5 for e in upgrades)
    assert generator.provisioned_ids == [assigned]


def test_invalid_fleet_config_is_refused() -> None:
    with pytest.raises(ValueError):
        FleetConfig(devices=0)
    with pytest.raises(ValueError):
        FleetConfig(new_firmware_share=1.5)


def test_rate_paces_output() -> None:
    generator = EventGenerator(FleetConfig(), random.Random(1), time.time)
    out = io.StringIO()
    started = time.monotonic()
    assert emit(generator, out, count=11, rate=100) == 11
    assert time.monotonic() - started >= 0.09
    assert len(out.getvalue().splitlines()) == 11


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--new-firmware-share", "2"])
    assert exit_info.value.code == 2
    assert "--new-firmware-share must be within 0..1" in capsys.readouterr().err
