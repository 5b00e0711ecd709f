"""Decide: what becomes of each item of a group. The one place an outcome is decided.

Every item gets one plan: a fact (`Telemetry`), a startup to store (`Provision`), or a `Rejection`
with its reason. Pure: no I/O and no clock of its own. What a decision needs from the database
comes in as `Known`, which the write stage reads inside the transaction that writes the outcome
(writer.py), so the group is decided on the state it is written against.

1. `check(items)`: each event's own rules (shape, record type and range, timestamp, startup token:
   validation.py).
2. `needs(checked)`: what the group's decisions need from the database: the recent failed startups
   and the devices of the serials its startups claim, and whether the provisioned ids its telemetry
   names exist.
3. `decide(checked, known)`: the plans, in input order, with the rules of the database's state:
   - a serial with `failed_startups_per_serial` failed startups (bad token, stale) within
     `failed_startup_window_seconds` is refused (`rate_limited`), even with a valid token; the
     failures are counted across workers and hosts (table `ingest.startup_failure`), and those of
     the group itself in input order;
   - a startup finds its device by serial, or keeps the legacy id it names (unless that id or its
     serial belongs to another), or is given a new provisioned id (several startups of one new
     serial in a group share it);
   - telemetry for a provisioned id (>= 2^31) that was never provisioned is `unknown_device`.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ingest_service.core.config import Settings
from ingest_service.ingest.body import BodyItem
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.validation import (
    LEGACY_DEVICE_ID_MAX,
    SERIAL_PATTERN,
    STARTUP,
    Rejection,
    Startup,
    Telemetry,
    validate,
)

# Failed startups: the guesses the limiter counts (a malformed startup is not a guess at a token).
FAILURE_REASONS = frozenset({"invalid_token", "stale_startup"})
# The last resort for an item the write path could not store as sent (writer.store(unstorable=True)).
UNSTORABLE = Rejection("error", "internal_error", "the item could not be stored as sent; kept as text")


@dataclass(slots=True, frozen=True)
class Provision:
    """A startup to store. Its device is `device_id`, or, when None, a new provisioned id for its serial."""

    serial: str
    started_at: float
    firmware: str | None
    device_id: int | None
    upgraded_legacy: bool  # the startup named the legacy id it keeps


Plan = Telemetry | Provision | Rejection


@dataclass(slots=True, frozen=True)
class Rules:
    """The settings and the record-type catalog the decisions follow."""

    catalog: RecordTypeCatalog
    secret: str
    max_clock_skew: float
    replay_window: float
    failures_per_serial: int
    failure_window: float

    @classmethod
    def from_settings(cls, settings: Settings, catalog: RecordTypeCatalog) -> Rules:
        return cls(
            catalog=catalog,
            secret=settings.provision_secret,
            max_clock_skew=settings.max_clock_skew_seconds,
            replay_window=settings.startup_replay_window_seconds,
            failures_per_serial=settings.failed_startups_per_serial,
            failure_window=settings.failed_startup_window_seconds,
        )


@dataclass(slots=True)
class Checked:
    """A group's items after each event's own rules."""

    outcomes: list[Telemetry | Startup | Rejection]
    serials: dict[int, str]  # position -> the serial a startup event claims, in input order


@dataclass(slots=True, frozen=True)
class Needs:
    """What the group's decisions need from the database (sorted, so concurrent writers lock alike)."""

    serials: list[str]  # serials claimed by startups: their recent failures and their devices
    named_device_ids: list[int]  # legacy ids that startups name: the serial each one has
    provisioned_ids: list[int]  # provisioned ids named by telemetry and not yet seen by this process


@dataclass(slots=True)
class Known:
    """What the database holds that the decisions depend on, for the `Needs` of a group."""

    failure_ages: dict[str, list[float]] = field(default_factory=dict)  # serial -> seconds since each
    # failed startup within the window, newest first (at most failures_per_serial of them)
    device_of_serial: dict[str, int] = field(default_factory=dict)
    serial_of_device: dict[int, str | None] = field(default_factory=dict)
    unknown_devices: set[int] = field(default_factory=set)  # provisioned ids that do not exist


@dataclass(slots=True)
class Decision:
    plans: list[Plan]  # one per item, in input order
    failed_serials: dict[int, str]  # position -> serial of a failed startup: counted by the limiter


def check(items: Sequence[BodyItem], rules: Rules, now: float) -> Checked:
    """Each event's own rules, with `now` as the server clock."""
    outcomes: list[Telemetry | Startup | Rejection] = []
    serials: dict[int, str] = {}
    for pos, item in enumerate(items):
        if item.parse_error is not None:
            reason, detail = item.parse_error
            outcomes.append(Rejection("invalid", reason, detail))
            continue
        event = item.parsed
        outcome = validate(
            event,
            rules.catalog,
            secret=rules.secret,
            now=now,
            max_skew=rules.max_clock_skew,
            replay_window=rules.replay_window,
        )
        outcomes.append(outcome)
        if type(outcome) is not Telemetry:
            serial = _claimed_serial(event)
            if serial is not None:
                serials[pos] = serial
    return Checked(outcomes, serials)


def _claimed_serial(event: Any) -> str | None:
    """The serial a startup event names, when it is a well-formed one (only those can be locked)."""
    if type(event) is not dict or event.get("event_type") != STARTUP:
        return None
    serial = event.get("serial")
    return serial if isinstance(serial, str) and SERIAL_PATTERN.fullmatch(serial) else None


def needs(checked: Checked, seen_devices: Container[int]) -> Needs:
    """What `decide` needs to know for this group; `seen_devices` are ids this process knows exist."""
    named: set[int] = set()
    provisioned: set[int] = set()
    for outcome in checked.outcomes:
        if type(outcome) is Telemetry:
            device_id = outcome.device_id
            if device_id > LEGACY_DEVICE_ID_MAX and device_id not in seen_devices:
                provisioned.add(device_id)
        elif type(outcome) is Startup and outcome.device_id is not None:
            named.add(outcome.device_id)
    return Needs(sorted(set(checked.serials.values())), sorted(named), sorted(provisioned))


def decide(checked: Checked, known: Known, rules: Rules) -> Decision:
    """The group's plans, in input order."""
    outcomes = list(checked.outcomes)
    failed: dict[int, str] = {}
    if known.unknown_devices:
        for pos, outcome in enumerate(outcomes):
            if type(outcome) is Telemetry and outcome.device_id in known.unknown_devices:
                outcomes[pos] = Rejection(
                    "invalid",
                    "unknown_device",
                    f"device {outcome.device_id} was never provisioned",
                    None,
                    outcome.device_id,
                )
    if not checked.serials:
        # Every startup claims a serial: without one, no outcome is a Startup left to place.
        return Decision(cast(list[Plan], outcomes), failed)
    _limit_failed_startups(outcomes, checked.serials, known.failure_ages, rules, failed)
    return Decision(_place_startups(outcomes, known), failed)


def _limit_failed_startups(
    outcomes: list[Telemetry | Startup | Rejection],
    serials: dict[int, str],
    failure_ages: dict[str, list[float]],
    rules: Rules,
    failed: dict[int, str],
) -> None:
    """Refuse every startup of a locked serial; count the group's own failures as they come."""
    ages = {serial: list(recent) for serial, recent in failure_ages.items()}
    for pos, serial in serials.items():
        recent = ages.setdefault(serial, [])
        wait = lockout(recent, rules)
        if wait is not None:
            outcomes[pos] = Rejection(
                "rate_limited",
                "too_many_failed_startups",
                f"too many failed startups for this serial; retry in {wait:.0f} s",
                STARTUP,
            )
            continue
        outcome = outcomes[pos]
        if type(outcome) is Rejection and outcome.reason in FAILURE_REASONS:
            recent.insert(0, 0.0)
            failed[pos] = serial


def lockout(failure_ages: list[float], rules: Rules) -> float | None:
    """Seconds until a serial with these recent failures (ages, newest first) may try again, or None
    when it is not locked: it is locked while `failures_per_serial` failures are in the window."""
    limit = rules.failures_per_serial
    if len(failure_ages) < limit:
        return None
    # The lock ends when the limit-th newest failure leaves the window.
    return max(0.0, rules.failure_window - failure_ages[limit - 1])


def _place_startups(outcomes: list[Telemetry | Startup | Rejection], known: Known) -> list[Plan]:
    """Give each startup its device, in input order (a later startup sees what an earlier one took)."""
    device_of_serial = dict(known.device_of_serial)
    serial_of_device = dict(known.serial_of_device)
    plans: list[Plan] = []
    for outcome in outcomes:
        if not isinstance(outcome, Startup):
            plans.append(outcome)
            continue
        serial, device_id = outcome.serial, outcome.device_id
        owner = device_of_serial.get(serial)
        if device_id is None:
            device_id = owner  # None: a new serial, given a new id when written
        elif owner is not None and owner != device_id:  # an upgraded legacy device keeps its id...
            plans.append(
                Rejection(
                    "invalid",
                    "serial_conflict",
                    f"serial {serial} already belongs to device {owner}",
                    STARTUP,
                    device_id,
                )
            )
            continue
        elif serial_of_device.get(device_id) not in (None, serial):  # ...unless another serial has it
            plans.append(
                Rejection(
                    "invalid",
                    "device_conflict",
                    f"device {device_id} is provisioned with another serial",
                    STARTUP,
                    device_id,
                )
            )
            continue
        plans.append(Provision(serial, outcome.started_at, outcome.firmware, device_id, outcome.device_id is not None))
        if device_id is not None:
            device_of_serial[serial] = device_id
            serial_of_device[device_id] = serial
    return plans
