"""Broker security with the shipped Mosquitto config (deploy/mosquitto): no anonymous access, a login
per device and one for the bridge, and an ACL by which a device publishes only to its own topics
and reads only its own results. Each denial is checked on the wire (MQTT 5 reason codes) and in the
ledger (nothing stored)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest

from bench.mosquitto import BRIDGE_USER, OwnedMosquitto
from ingest_service.core.database import DatabaseTarget
from tests.mqtt.clients import BridgeProcess, MqttClient
from tests.reliability.procs import SECRET
from tests.utils.events import startup, telemetry

pytestmark = pytest.mark.slow

USERS = {BRIDGE_USER: "bridge-pass", "7": "pass-7", "8": "pass-8", "SN-SEC-1": "pass-sn"}


@pytest.fixture
def secured(broker_root: Path, prefix: str) -> Iterator[OwnedMosquitto]:
    broker = OwnedMosquitto(broker_root, prefix, users=USERS).start()
    try:
        yield broker
    finally:
        broker.stop()


def _raw_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select count(*) from ingest.raw_record").fetchone()
    assert row is not None
    return row[0]


def _client(broker: OwnedMosquitto, user: str | None, name: str, subscribe: tuple[str, ...] = ()) -> MqttClient:
    password = USERS.get(user) if user else None
    return MqttClient(broker.url(user, password), f"{broker.prefix}-{name}", subscribe=subscribe)


def test_logins_are_required(secured: OwnedMosquitto) -> None:
    anonymous = MqttClient(secured.url(), f"{secured.prefix}-anon")
    wrong = MqttClient(secured.url("7", "not-the-password"), f"{secured.prefix}-wrong")
    right = _client(secured, "7", "right")
    try:
        assert anonymous.connect_reason is not None and anonymous.connect_reason.is_failure
        assert wrong.connect_reason is not None and wrong.connect_reason.is_failure
        assert right.connect_reason is not None and not right.connect_reason.is_failure
    finally:
        for client in (anonymous, wrong, right):
            client.client.loop_stop()


def test_each_device_publishes_and_reads_only_its_own_topics(
    secured: OwnedMosquitto, fresh_db: DatabaseTarget, tmp_path: Path
) -> None:
    p = secured.prefix
    bridge = BridgeProcess(
        fresh_db.url, secured.url(BRIDGE_USER, USERS[BRIDGE_USER]), p, f"{p}-bridge", tmp_path / "bridge.log"
    ).start()
    device7 = _client(secured, "7", "dev7", subscribe=(f"{p}/7/results",))
    try:
        # its own telemetry: stored and answered on its own results topic
        own = device7.publish(f"{p}/7/telemetry", orjson.dumps(telemetry(7, "battery_charge", 50.0)))
        device7.wait_published([own], 10)
        (answer,) = device7.wait_messages(1, 20)
        assert answer.topic == f"{p}/7/results" and answer.json()["status"] == "ok"

        # another device's telemetry, and forged results: refused by the broker (MQTT 5 PUBACK 0x87)
        forged = [
            device7.publish(f"{p}/8/telemetry", orjson.dumps(telemetry(8, "battery_charge", 51.0))),
            device7.publish(f"{p}/8/results", b'{"status": "ok"}'),
            device7.publish(f"{p}/7/results", b'{"status": "ok"}'),
            device7.publish(f"{p}/SN-SEC-1/startup", orjson.dumps(startup(SECRET, "SN-SEC-1"))),
        ]
        device7.wait_published(forged, 10)
        assert sorted(device7.refused_mids) == sorted(info.mid for info in forged)
        assert set(device7.refused_mids.values()) == {"Not authorized"}

        # reading another device's results or anyone's telemetry: Mosquitto 2.0 grants the SUBSCRIBE
        # but checks `read` on every delivery, so the spy gets nothing while device 8 is answered
        spy_topics = (f"{p}/8/results", f"{p}/+/telemetry", f"$share/ingest/{p}/+/telemetry", f"{p}/#")
        spy = _client(secured, "7", "spy", subscribe=spy_topics)
        device8 = _client(secured, "8", "dev8", subscribe=(f"{p}/8/results",))
        try:
            mine = device8.publish(f"{p}/8/telemetry", orjson.dumps(telemetry(8, "battery_charge", 52.0)))
            device8.wait_published([mine], 10)
            (answer8,) = device8.wait_messages(1, 20)
            assert answer8.json()["status"] == "ok"
            time.sleep(1.0)
            assert spy.messages() == []
        finally:
            spy.close()
            device8.close()
        assert len(device7.messages()) == 1  # the refused publishes never reached the bridge
        assert _raw_rows(fresh_db.url) == 2

        # a device that has not been provisioned logs in as its serial for its startup
        serial = _client(secured, "SN-SEC-1", "serial", subscribe=(f"{p}/SN-SEC-1/results",))
        try:
            started = serial.publish(f"{p}/SN-SEC-1/startup", orjson.dumps(startup(SECRET, "SN-SEC-1")))
            serial.wait_published([started], 10)
            assert serial.refused_mids == {}
            (provisioned,) = serial.wait_messages(1, 20)
            assert provisioned.json()["status"] == "provisioned"
        finally:
            serial.close()
    finally:
        device7.close()
        assert bridge.stop() == 0
    assert _raw_rows(fresh_db.url) == 3
    assert bridge.stats()["results_refused"] == 0  # the bridge's login may publish every result


def test_a_bridge_with_a_wrong_login_stops_with_a_clear_error(
    secured: OwnedMosquitto, fresh_db: DatabaseTarget, tmp_path: Path
) -> None:
    p = secured.prefix
    bridge = BridgeProcess(fresh_db.url, secured.url(BRIDGE_USER, "wrong"), p, f"{p}-bridge", tmp_path / "bad.log")
    with pytest.raises(RuntimeError, match="not subscribed"):
        bridge.start(timeout=20)
    assert bridge.process is not None and bridge.process.wait(10) == 1
    assert "refused the bridge's login" in bridge.tail()


def test_a_device_login_cannot_act_as_the_bridge(
    secured: OwnedMosquitto, fresh_db: DatabaseTarget, tmp_path: Path
) -> None:
    """A device's credentials in MQTT_URL: Mosquitto grants the subscriptions, but the ACL gives a
    device no `read` on telemetry, so not one message reaches that bridge."""
    p = secured.prefix
    bridge = BridgeProcess(fresh_db.url, secured.url("7", USERS["7"]), p, f"{p}-bridge", tmp_path / "dev.log").start()
    device8 = _client(secured, "8", "dev8")
    try:
        published = device8.publish(f"{p}/8/telemetry", orjson.dumps(telemetry(8, "battery_charge", 53.0)))
        device8.wait_published([published], 10)
        assert device8.refused_mids == {}
        time.sleep(2.0)
    finally:
        device8.close()
        assert bridge.stop() == 0
    assert bridge.stats()["received"] == 0
    assert _raw_rows(fresh_db.url) == 0
