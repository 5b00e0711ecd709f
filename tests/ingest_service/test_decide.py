"""The decide stage on its own: pure functions of the items, the database's state (`Known`) and the
rules, here with the real record-type catalog of a migrated database."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest.answer import STATUS_OF_REASON
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.decide import (
    Known,
    Provision,
    Rules,
    check,
    decide,
    lockout,
    needs,
)
from ingest_service.ingest.validation import Rejection, Telemetry
from tests.utils.events import startup, telemetry
from tests.utils.write_path import SECRET, load_catalog, request, rules

PROVISIONED = 2**31


@pytest.fixture(scope="module")
def catalog(module_db: DatabaseTarget) -> RecordTypeCatalog:
    async def load() -> RecordTypeCatalog:
        async with await psycopg.AsyncConnection.connect(module_db.url) as conn:
            return await load_catalog(conn)

    return asyncio.run(load())


def _decided(events: list[Any], rules: Rules, known: Known | None = None) -> tuple[list[Any], dict[int, str]]:
    checked = check(request(events).items, rules, time.time())
    decision = decide(checked, known or Known(), rules)
    return decision.plans, decision.failed_serials


def test_telemetry_becomes_a_fact_with_the_catalog_type_and_native_value(catalog: RecordTypeCatalog) -> None:
    ticks = catalog.get("platform_extension_ticks")
    assert ticks is not None and (ticks.min_value, ticks.max_value) == (0, 3000)
    ts = time.time() - 5
    (plan,), failed = _decided([telemetry(7, "platform_extension_ticks", 3000, ts)], rules(catalog))
    assert plan == Telemetry(7, ticks.id, ts, 3000.0)  # ticks stay ticks
    assert failed == {}


def test_value_outside_the_catalog_range_is_rejected(catalog: RecordTypeCatalog) -> None:
    (plan,), _ = _decided([telemetry(7, "platform_extension_mm", 151)], rules(catalog))
    assert isinstance(plan, Rejection)
    assert (plan.status, plan.reason, plan.device_id) == ("invalid", "value_out_of_range", 7)
    assert plan.detail == "platform_extension_mm value 151 is outside -150..150 mm"


def test_needs_names_only_unseen_provisioned_ids_and_startup_serials(catalog: RecordTypeCatalog) -> None:
    events = [
        telemetry(5),  # legacy: created on first sight, nothing to read
        telemetry(PROVISIONED + 2),
        telemetry(PROVISIONED + 1),
        telemetry(PROVISIONED + 1, value=13),
        telemetry(PROVISIONED + 3),  # seen by this process
        startup(SECRET, "SN-B", device_id=9),
        startup("bad", "SN-A"),
        startup(SECRET, "SN-A"),
        {"event_type": "device_startup", "serial": "not a serial!"},  # cannot be locked: nothing to read
    ]
    checked = check(request(events).items, rules(catalog), time.time())
    wanted = needs(checked, {PROVISIONED + 3: 0.0})
    assert wanted.provisioned_ids == [PROVISIONED + 1, PROVISIONED + 2]
    assert wanted.serials == ["SN-A", "SN-B"]
    assert wanted.named_device_ids == [9]


def test_unknown_provisioned_device_is_rejected(catalog: RecordTypeCatalog) -> None:
    known = Known(unknown_devices={PROVISIONED + 1})
    plans, _ = _decided([telemetry(PROVISIONED + 1), telemetry(PROVISIONED + 2)], rules(catalog), known)
    assert isinstance(plans[0], Rejection) and plans[0].reason == "unknown_device"
    assert plans[0].device_id == PROVISIONED + 1
    assert isinstance(plans[1], Telemetry)


def test_lockout_ends_when_the_limit_th_newest_failure_leaves_the_window(catalog: RecordTypeCatalog) -> None:
    three_in_a_minute = rules(catalog, failures_per_serial=3, failure_window=60.0)
    assert lockout([1.0, 5.0], three_in_a_minute) is None
    assert lockout([1.0, 5.0, 20.0], three_in_a_minute) == pytest.approx(40.0)
    assert lockout([0.0, 5.0, 20.0, 50.0], three_in_a_minute) == pytest.approx(40.0)


def test_failures_of_the_group_count_in_input_order(catalog: RecordTypeCatalog) -> None:
    limited = rules(catalog, failures_per_serial=3, failure_window=60.0)
    known = Known(failure_ages={"SN-X": [10.0]})  # one failure 10 s ago, from any worker or host
    events = [
        startup(SECRET, "SN-X"),  # valid, and not yet locked
        startup("guess", "SN-X"),  # failure 2
        {"event_type": "device_startup", "serial": "SN-X"},  # malformed: not a guess, not counted
        startup(SECRET, "SN-X", timestamp=time.time() - 86400 * 2),  # stale: failure 3
        startup(SECRET, "SN-X"),  # locked now, a valid token or not
        startup("guess", "SN-Y"),
    ]
    plans, failed = _decided(events, limited, known)
    assert [type(p).__name__ for p in plans] == [
        "Provision",
        "Rejection",
        "Rejection",
        "Rejection",
        "Rejection",
        "Rejection",
    ]
    assert [p.reason for p in plans[1:]] == [
        "invalid_token",
        "missing_field",
        "stale_startup",
        "too_many_failed_startups",
        "invalid_token",
    ]
    assert plans[4].status == "rate_limited"
    # locked until the oldest of the three (10 s ago, from the database) leaves the 60 s window
    assert plans[4].detail == "too many failed startups for this serial; retry in 50 s"
    assert failed == {1: "SN-X", 3: "SN-X", 5: "SN-Y"}  # written with their outcomes, for every worker


def test_locked_serial_is_refused_whatever_the_startup_says(catalog: RecordTypeCatalog) -> None:
    known = Known(failure_ages={"SN-L": [1.0, 2.0, 3.0, 4.0, 5.0]})
    plans, failed = _decided(
        [startup(SECRET, "SN-L"), {"event_type": "device_startup", "serial": "SN-L"}], rules(catalog), known
    )
    assert [(p.status, p.reason) for p in plans] == [("rate_limited", "too_many_failed_startups")] * 2
    assert failed == {}  # a refused attempt is not a new failure: the lock ends with the window


def test_startups_find_keep_or_get_their_device(catalog: RecordTypeCatalog) -> None:
    known = Known(
        device_of_serial={"SN-OLD": PROVISIONED, "SN-7": 7},
        serial_of_device={PROVISIONED: "SN-OLD", 7: "SN-7", 8: None},
    )
    events = [
        startup(SECRET, "SN-OLD"),  # known serial: its device
        startup(SECRET, "SN-NEW"),  # new serial: a new id, decided by the writer
        startup(SECRET, "SN-NEW"),  # the same new serial again: the same new id
        startup(SECRET, "SN-8", device_id=8),  # a legacy device without serial keeps its id
        startup(SECRET, "SN-OLD", device_id=9),  # the serial belongs to another device
        startup(SECRET, "SN-9", device_id=7),  # the device has another serial
        startup(SECRET, "SN-8"),  # sees the earlier startup of this group: device 8
    ]
    plans, _ = _decided(events, rules(catalog), known)
    assert plans[0] == Provision("SN-OLD", plans[0].started_at, "2.0.0", PROVISIONED, False)
    assert isinstance(plans[1], Provision) and plans[1].device_id is None
    assert isinstance(plans[2], Provision) and plans[2].device_id is None and plans[2].serial == "SN-NEW"
    assert isinstance(plans[3], Provision) and (plans[3].device_id, plans[3].upgraded_legacy) == (8, True)
    assert (plans[4].reason, plans[4].device_id) == ("serial_conflict", 9)
    assert plans[4].detail == f"serial SN-OLD already belongs to device {PROVISIONED}"
    assert (plans[5].reason, plans[5].device_id) == ("device_conflict", 7)
    assert isinstance(plans[6], Provision) and plans[6].device_id == 8


REASONS = [
    b"",
    b"not json",
    b"[]",
    [1],
    [{"device_id": 1}],
    [{"device_id": "1", "event_type": "battery_charge", "value": 1, "timestamp": 1.7e9}],
    [telemetry(1, "no_such_type")],
    [telemetry(1, value=1000)],
    b'[{"device_id": 1, "event_type": "battery_charge", "value": 1, "timestamp": 1e400}]',
    [telemetry(1, timestamp=1.0)],
    [telemetry(1, timestamp=time.time() + 3600)],
    [telemetry(2**63)],
    [{"event_type": "device_startup", "serial": "bad serial", "provision_token": "x", "timestamp": time.time()}],
    [startup("guess", "SN-R")],
    [startup(SECRET, "SN-R", timestamp=time.time() - 7 * 86400)],
]


@pytest.mark.parametrize("events", REASONS)
def test_rejection_status_follows_its_reason(catalog: RecordTypeCatalog, events: Any) -> None:
    """A recorded delivery's results are rebuilt from the ledger's reasons (answer.STATUS_OF_REASON):
    every rejection's status must be the one its reason maps to."""
    known = Known(failure_ages={"SN-R": []}, unknown_devices=set())
    plans, _ = _decided(events, rules(catalog), known)
    rejections = [p for p in plans if isinstance(p, Rejection)]
    assert rejections
    for rejection in rejections:
        assert rejection.status == STATUS_OF_REASON.get(rejection.reason, "invalid"), rejection


def test_rate_limited_and_device_rejections_follow_their_reason(catalog: RecordTypeCatalog) -> None:
    known = Known(
        failure_ages={"SN-L": [1.0] * 5},
        device_of_serial={"SN-A": 3},
        serial_of_device={3: "SN-A", 4: "SN-B"},
        unknown_devices={PROVISIONED},
    )
    events = [
        startup(SECRET, "SN-L"),
        startup(SECRET, "SN-A", device_id=5),
        startup(SECRET, "SN-C", device_id=4),
        telemetry(PROVISIONED),
    ]
    plans, _ = _decided(events, rules(catalog), known)
    assert [p.reason for p in plans] == [
        "too_many_failed_startups",
        "serial_conflict",
        "device_conflict",
        "unknown_device",
    ]
    for rejection in plans:
        assert rejection.status == STATUS_OF_REASON.get(rejection.reason, "invalid")
