"""A seeded, generator-like event list, its expected outcomes, and the metrics expected from it.

The expectations are computed here in plain Python from the events that are sent, never from the
database, so the dbt models are checked against an independent implementation of each metric.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

TICKS, MM, BATTERY, HEIGHT = "platform_extension_ticks", "platform_extension_mm", "battery_charge", "platform_height_mm"
RECORD_TYPES: dict[str, tuple[int, str, float, float]] = {
    # name: (id, payload_format, min, max), as seeded by the base migration
    TICKS: (1, "legacy", 0, 3000),
    MM: (2, "new", -150, 150),
    BATTERY: (3, "common", 0, 100),
    HEIGHT: (4, "common", 0, 200),
}
EXTENSION = (TICKS, MM)
STARTUP = "device_startup"


def provision_token(secret: str, serial: str) -> str:
    return hmac.new(secret.encode(), serial.encode(), hashlib.sha256).hexdigest()


@dataclass
class Outcome:
    """What the ingest path must make of one event (the Python side of invariant 2)."""

    kind: str  # processed | duplicate | provisioned | error
    payload_format: str  # legacy | new | common | startup | unknown
    reason: str | None = None
    fact: tuple[int, str, float, float] | None = None  # (device_id, type, ts, value) for processed


@dataclass
class Scenario:
    events: list[dict[str, Any]]
    outcomes: list[Outcome]
    as_of: float  # epoch seconds: "now" for the last-hour metric
    upgraded_device: int
    secret: str
    facts: list[tuple[int, str, float, float]] = field(default_factory=list)


def make_scenario(seed: int = 7, devices: int = 12, count: int = 1500, secret: str = "dev-secret") -> Scenario:
    """~`count` events over the 26 hours before now: legacy (ticks) devices, new (mm) devices, one
    device upgraded mid-stream via device_startup, ~10% malformed, some replays, some startups."""
    rng = random.Random(seed)
    end = float(int(datetime.now(UTC).timestamp()) - 600)
    start = end - 26 * 3600
    step = (end - start) / count
    legacy_ids = list(range(1, devices // 2 + 1))
    new_ids = list(range(devices // 2 + 1, devices + 1))
    upgraded = legacy_ids[0]
    upgrade_at = start + (end - start) * 0.6
    events: list[dict[str, Any]] = []
    sent_valid: list[dict[str, Any]] = []
    upgrade_sent = False
    for i in range(count):
        ts = round(start + i * step, 3)
        if not upgrade_sent and ts >= upgrade_at:
            serial = f"SN-UPGRADE-{upgraded}"
            events.append(
                {
                    "event_type": STARTUP,
                    "serial": serial,
                    "provision_token": provision_token(secret, serial),
                    "timestamp": end - 60,
                    "firmware": "2.0.0",
                    "device_id": upgraded,
                }
            )
            upgrade_sent = True
        device = rng.choice(legacy_ids + new_ids)
        on_mm = device in new_ids or (device == upgraded and ts >= upgrade_at)
        roll = rng.random()
        kind = (MM if on_mm else TICKS) if roll < 0.6 else BATTERY if roll < 0.8 else HEIGHT
        value: float
        if kind == TICKS:
            value = float(rng.randint(0, 3000))
        elif kind == MM:
            value = (
                rng.choice([0.0, round(rng.uniform(-150, 150), 2)])
                if rng.random() < 0.1
                else round(rng.uniform(-150, 150), 2)
            )
        elif kind == BATTERY:
            value = round(rng.uniform(0, 100), 1)
        else:
            value = round(rng.uniform(0, 200), 1)
        event: dict[str, Any] = {"device_id": device, "event_type": kind, "value": value, "timestamp": ts}
        bad = rng.random()
        if bad < 0.025:
            event = {}
        elif bad < 0.05:
            event.pop(rng.choice(["device_id", "value", "timestamp"]))
        elif bad < 0.075:
            event["value"] = "high"
        elif bad < 0.085:
            event["event_type"] = "platform_tilt_deg"
        elif bad < 0.10:
            event["value"] = 5000.0 if kind == TICKS else 999.0
        elif bad < 0.13 and sent_valid:
            event = dict(rng.choice(sent_valid))  # a replay: same event again
        else:
            sent_valid.append(event)
        events.append(event)
    new_serial = "SN-NEW-0001"
    events.append(
        {
            "event_type": STARTUP,
            "serial": new_serial,
            "provision_token": provision_token(secret, new_serial),
            "timestamp": end - 30,
            "firmware": "2.0.0",
        }
    )
    events.append({"event_type": STARTUP, "serial": "SN-FORGED", "provision_token": "00" * 32, "timestamp": end - 20})
    scenario = Scenario(events, [], as_of=end, upgraded_device=upgraded, secret=secret)
    classify(scenario)
    return scenario


def classify(scenario: Scenario) -> None:
    """The outcome each event must get, per the product's validation rules."""
    seen: set[tuple[int, str, float, float]] = set()
    for event in scenario.events:
        event_type = event.get("event_type")
        if event_type == STARTUP:
            ok = event.get("provision_token") == provision_token(scenario.secret, event.get("serial", ""))
            scenario.outcomes.append(
                Outcome("provisioned", "startup") if ok else Outcome("error", "startup", "invalid_token")
            )
            continue
        fmt = RECORD_TYPES[event_type][1] if event_type in RECORD_TYPES else "unknown"
        if not event:
            scenario.outcomes.append(Outcome("error", "unknown", "missing_field"))
        elif any(k not in event for k in ("device_id", "event_type", "value", "timestamp")):
            scenario.outcomes.append(Outcome("error", fmt, "missing_field"))
        elif event_type not in RECORD_TYPES:
            scenario.outcomes.append(Outcome("error", "unknown", "unknown_event_type"))
        elif not isinstance(event["value"], int | float):
            scenario.outcomes.append(Outcome("error", fmt, "wrong_type"))
        elif not RECORD_TYPES[event_type][2] <= event["value"] <= RECORD_TYPES[event_type][3]:
            scenario.outcomes.append(Outcome("error", fmt, "value_out_of_range"))
        else:
            fact = (int(event["device_id"]), event_type, float(event["timestamp"]), float(event["value"]))
            if fact in seen:
                scenario.outcomes.append(Outcome("duplicate", fmt, fact=fact))
            else:
                seen.add(fact)
                scenario.facts.append(fact)
                scenario.outcomes.append(Outcome("processed", fmt, fact=fact))


# --- expected metrics ------------------------------------------------------------------------


def to_mm(event_type: str, value: float) -> float:
    return value / 20.0 if event_type == TICKS else value


def utc_day(ts: float) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


def utc_hour(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(minute=0, second=0, microsecond=0)


def extension_series(facts: list[tuple[int, str, float, float]]) -> dict[int, list[tuple[float, float]]]:
    series: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for device, kind, ts, value in sorted(facts, key=lambda f: f[2]):
        if kind in EXTENSION:
            series[device].append((ts, to_mm(kind, value)))
    return series


def side_switches(series: dict[int, list[tuple[float, float]]]) -> dict[int, tuple[int, int, int]]:
    out = {}
    for device, readings in series.items():
        signs = [1 if mm > 0 else -1 for _, mm in readings if mm != 0]
        l2r = sum(1 for a, b in zip(signs, signs[1:], strict=False) if a == -1 and b == 1)
        r2l = sum(1 for a, b in zip(signs, signs[1:], strict=False) if a == 1 and b == -1)
        out[device] = (l2r, r2l, l2r + r2l)
    return out


def expected(s: Scenario) -> dict[str, Any]:
    facts = s.facts
    ext = [f for f in facts if f[1] in EXTENSION]
    series = extension_series(facts)
    exp: dict[str, Any] = {}

    exp["counts_by_format"] = {
        kind: (len([f for f in ext if f[1] == kind]), len({f[0] for f in ext if f[1] == kind})) for kind in EXTENSION
    }
    per_device: dict[int, Counter[str]] = defaultdict(Counter)
    for f in ext:
        per_device[f[0]][f[1]] += 1
    exp["both_formats"] = {d: (c[TICKS], c[MM]) for d, c in per_device.items() if c[TICKS] and c[MM]}

    recent = sorted(ext, key=lambda f: f[2], reverse=True)[:50]
    exp["recent"] = [(f[0], to_mm(f[1], f[3])) for f in recent]

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    exp["avg_by_source"] = {
        d: (
            mean([f[3] for f in ext if f[0] == d and f[1] == MM]),
            mean([f[3] / 20.0 for f in ext if f[0] == d and f[1] == TICKS]),
            mean([to_mm(f[1], f[3]) for f in ext if f[0] == d]),
        )
        for d in per_device
    }
    exp["side_switches"] = side_switches(series)
    window = {d: [(t, mm) for t, mm in r if t >= s.as_of - 3600] for d, r in series.items()}
    exp["side_switches_last_hour"] = side_switches({d: r for d, r in window.items() if r})

    ext_vs_ret = {}
    for d, readings in series.items():
        mms = [mm for _, mm in readings]
        pairs = list(zip(mms, mms[1:], strict=False))
        ext_vs_ret[d] = (sum(b > a for a, b in pairs), sum(b < a for a, b in pairs), sum(b == a for a, b in pairs))
    exp["extension_vs_retraction"] = ext_vs_ret

    def summary(kind: str) -> dict[int, tuple[float, float, float, int, float]]:
        out = {}
        for d in {f[0] for f in facts if f[1] == kind}:
            vals = [f for f in facts if f[0] == d and f[1] == kind]
            xs = [f[3] for f in vals]
            out[d] = (min(xs), max(xs), sum(xs) / len(xs), len(xs), max(f[2] for f in vals))
        return out

    exp["battery"] = summary(BATTERY)
    exp["height"] = summary(HEIGHT)

    share: dict[tuple[date, str], tuple[int, int]] = {}
    days: dict[date, list[tuple[int, str, float, float]]] = defaultdict(list)
    for f in ext:
        days[utc_day(f[2])].append(f)
    for day, day_facts in days.items():
        total_devices = len({f[0] for f in day_facts})
        for kind in EXTENSION:
            fmt = RECORD_TYPES[kind][1]
            of_kind = [f for f in day_facts if f[1] == kind]
            if of_kind:
                devices = len({f[0] for f in of_kind})
                share[(day, fmt)] = (
                    devices,
                    len(of_kind),
                    total_devices,
                    len(day_facts),
                    devices / total_devices,
                    len(of_kind) / len(day_facts),
                )
    exp["format_share_daily"] = share

    first: dict[int, dict[str, date]] = defaultdict(dict)
    for f in sorted(ext, key=lambda f: f[2]):
        first[f[0]].setdefault(f[1], utc_day(f[2]))
    all_days = [min(days) + timedelta(days=i) for i in range((max(days) - min(days)).days + 1)]
    states = {}
    for day in all_days:
        legacy_only = new_only = migrated = 0
        for firsts in first.values():
            had_ticks = TICKS in firsts and firsts[TICKS] <= day
            had_mm = MM in firsts and firsts[MM] <= day
            migrated += had_ticks and had_mm
            legacy_only += had_ticks and not had_mm
            new_only += had_mm and not had_ticks
        states[day] = (legacy_only, new_only, migrated, legacy_only + new_only + migrated)
    exp["device_state_daily"] = states

    by_format = Counter(o.payload_format for o in s.outcomes)
    errors = Counter((o.payload_format, o.reason) for o in s.outcomes if o.kind == "error")
    exp["raw_by_format"] = dict(by_format)
    exp["errors_by_format_reason"] = dict(errors)
    exp["errors_by_format"] = dict(Counter(o.payload_format for o in s.outcomes if o.kind == "error"))
    exp["outcomes"] = dict(Counter(o.kind for o in s.outcomes))

    hourly: Counter[tuple[int, int, datetime]] = Counter()
    for f in facts:
        hourly[(f[0], RECORD_TYPES[f[1]][0], utc_hour(f[2]))] += 1
    exp["hourly_counts"] = dict(hourly)
    return exp
