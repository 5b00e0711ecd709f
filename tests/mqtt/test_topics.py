"""The topic scheme, the message key and the topic rule: pure functions, no broker needed."""

from __future__ import annotations

import itertools

import pytest

from ingest_service.ingest.body import split_items
from ingest_service.mqtt.door import check_topic, message_key
from ingest_service.mqtt.topics import Route, Topics


def test_filters_are_shared_subscriptions_of_both_kinds() -> None:
    topics = Topics("devices")
    assert topics.filters("ingest") == ["$share/ingest/devices/+/telemetry", "$share/ingest/devices/+/startup"]
    assert topics.filters(None) == ["devices/+/telemetry", "devices/+/startup"]


@pytest.mark.parametrize(
    ("topic", "route"),
    [
        ("devices/7/telemetry", Route("telemetry", "7")),
        ("devices/SN-000007/startup", Route("startup", "SN-000007")),
        ("devices/7/results", None),
        ("devices/7/telemetry/extra", None),
        ("devices//telemetry", None),
        ("other/7/telemetry", None),
        ("xdevices/7/telemetry", None),
        ("devices", None),
    ],
)
def test_parse(topic: str, route: Route | None) -> None:
    assert Topics("devices").parse(topic) == route


def test_prefix_of_several_levels() -> None:
    topics = Topics("site-a/devices")
    route = topics.parse("site-a/devices/9/telemetry")
    assert route == Route("telemetry", "9")
    assert topics.results(route) == "site-a/devices/9/results"
    assert topics.parse("devices/9/telemetry") is None


def test_message_key_is_the_same_for_the_same_message_and_differs_for_any_change() -> None:
    base = ("devices/7/telemetry", b'{"device_id": 7}', None, None)
    assert message_key(*base) == message_key(*base)
    variants = [
        ("devices/8/telemetry", b'{"device_id": 7}', None, None),  # another device
        ("devices/7/telemetry", b'{"device_id": 7} ', None, None),  # another payload
        ("devices/7/telemetry", b'{"device_id": 7}', "application/x-ndjson", None),  # read another way
        ("devices/7/telemetry", b'{"device_id": 7}', None, b"1"),  # the device numbered it
        ("devices/7/telemetry", b'{"device_id": 7}', None, b""),
    ]
    keys = {message_key(*v) for v in [base, *variants]}
    assert len(keys) == 1 + len(variants) - 1  # no correlation data and empty correlation data are the same
    assert all(len(k) == 64 for k in keys)


def test_message_key_parts_cannot_shift_into_each_other() -> None:
    """Length prefixes: moving bytes from one part to the next gives another key."""
    keys = {
        message_key(topic, payload, ctype, corr)
        for topic, payload, ctype, corr in itertools.product(["a", "ab"], [b"c", b"bc"], [None, "c"], [None, b"b"])
    }
    assert len(keys) == 16


def _items(body: bytes, content_type: str | None = None):
    return split_items(body, content_type, 100)[1]


@pytest.mark.parametrize(
    ("route", "body", "mismatch"),
    [
        (Route("telemetry", "7"), b'{"device_id": 7, "event_type": "battery_charge"}', False),
        (Route("telemetry", "7"), b'{"device_id": 8, "event_type": "battery_charge"}', True),
        (Route("telemetry", "007"), b'{"device_id": 7}', True),  # topics carry canonical ids
        (Route("telemetry", "abc"), b'{"device_id": 7}', True),
        (Route("telemetry", "7"), b'{"event_type": "device_startup", "serial": "SN-1"}', True),
        # ids the payload does not state (or states with a wrong type) are validation's business
        (Route("telemetry", "7"), b'{"event_type": "battery_charge"}', False),
        (Route("telemetry", "7"), b'{"device_id": "7"}', False),
        (Route("telemetry", "7"), b"not json", False),
        (Route("telemetry", "7"), b"[1, 2]", False),
        (Route("startup", "SN-1"), b'{"event_type": "device_startup", "serial": "SN-1"}', False),
        (Route("startup", "SN-1"), b'{"event_type": "device_startup", "serial": "SN-2"}', True),
        (Route("startup", "SN-1"), b'{"event_type": "battery_charge", "device_id": 7}', True),
        (Route("startup", "SN-1"), b'{"event_type": "device_startup"}', False),
    ],
)
def test_topic_rule(route: Route, body: bytes, mismatch: bool) -> None:
    items = _items(body)
    before = [item.parse_error for item in items]
    check_topic(route, items)
    if mismatch:
        assert [item.parse_error[0] for item in items if item.parse_error] == ["topic_mismatch"]
    else:
        assert [item.parse_error for item in items] == before


def test_topic_rule_marks_only_the_items_that_disagree() -> None:
    items = _items(b'[{"device_id": 7}, {"device_id": 8}, {"device_id": 7}]')
    check_topic(Route("telemetry", "7"), items)
    assert [item.parse_error and item.parse_error[0] for item in items] == [None, "topic_mismatch", None]
    assert "device_id 8" in items[1].parse_error[1]
