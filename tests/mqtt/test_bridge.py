"""The bridge as a process (`iot-platform mqtt`) on the machine's Mosquitto and a real PostgreSQL:
every message stored once with its outcome and answered on its results topic, startups, the
persistent session across a restart, and two bridges sharing one subscription."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import psycopg
import pytest

from ingest_service.core.config import PROJECT_ROOT
from ingest_service.core.database import DatabaseTarget
from ingest_service.mqtt.door import message_key
from platform_cli.processes import iot_platform
from tests.mqtt.clients import BridgeProcess, MqttClient, wait_stable
from tests.reliability.procs import SECRET
from tests.utils.events import startup, telemetry

pytestmark = pytest.mark.slow


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            """select (select count(*) from ingest.raw_record), (select count(*) from ingest.processed_record),
                      (select count(*) from ingest.ingest_error), (select count(*) from ingest.device_startup)"""
        ).fetchone()
    assert row is not None
    return dict(zip(("raw", "facts", "errors", "startups"), row, strict=True))


def _bridge(target: DatabaseTarget, broker: str, prefix: str, tmp_path: Path, name: str = "bridge") -> BridgeProcess:
    return BridgeProcess(target.url, broker, prefix, f"{prefix}-{name}", tmp_path / f"{name}.log")


def test_500_valid_and_10_invalid_messages(
    fresh_db: DatabaseTarget, system_broker: str, prefix: str, tmp_path: Path
) -> None:
    bridge = _bridge(fresh_db, system_broker, prefix, tmp_path)
    bridge.env_overrides["MQTT_INFLIGHT"] = "50"
    bridge.start()
    observer = MqttClient(system_broker, f"{prefix}-observer", subscribe=(f"{prefix}/+/results",))
    device = MqttClient(system_broker, f"{prefix}-device")
    try:
        now = time.time() - 60
        messages: list[tuple[str, bytes, str, str | None]] = []  # topic, payload, expected status, reason
        for i in range(500):
            device_id = 1 + i % 10
            event = telemetry(device_id, "platform_extension_mm", i % 150, now + i * 0.001)
            messages.append((f"{prefix}/{device_id}/telemetry", orjson.dumps(event), "ok", None))
        invalid = [
            *[(f"{prefix}/1/telemetry", telemetry(99, "battery_charge", 5.0 + i), "topic_mismatch") for i in range(4)],
            *[(f"{prefix}/2/telemetry", {"device_id": 2, "value": i}, "missing_field") for i in range(3)],
            *[(f"{prefix}/3/telemetry", f"not json {i}".encode(), "invalid_json") for i in range(2)],
            (f"{prefix}/4/telemetry", telemetry(4, "battery_charge", 101.0), "value_out_of_range"),
        ]
        for topic, body, reason in invalid:
            payload = body if isinstance(body, bytes) else orjson.dumps(body)
            messages.append((topic, payload, "invalid", reason))

        infos = [
            device.publish(topic, payload, correlation=str(n).encode())
            for n, (topic, payload, _, _) in enumerate(messages)
        ]
        device.wait_published(infos, 30)
        assert device.refused_mids == {}
        results = observer.wait_messages(len(messages), 60)
        results = wait_stable(observer.messages, 5, quiet=1.0)  # and no extra answers

        assert len(results) == 510
        by_number = {int(r.correlation): r for r in results}
        assert sorted(by_number) == list(range(510))
        with psycopg.connect(fresh_db.url, autocommit=True) as conn:
            raw_by_request = dict(conn.execute("select request_id, id from ingest.raw_record").fetchall())
        for n, (topic, payload, status, reason) in enumerate(messages):
            answer = by_number[n]
            assert answer.topic == topic.replace("/telemetry", "/results")
            result = answer.json()
            assert (result["status"], result.get("reason")) == (status, reason), (n, result)
            key = message_key(topic, payload, None, str(n).encode())
            assert result["raw_id"] == raw_by_request["mqtt:" + key]

        assert _counts(fresh_db.url) == {"raw": 510, "facts": 500, "errors": 10, "startups": 0}
        with psycopg.connect(fresh_db.url, autocommit=True) as conn:
            reasons = dict(conn.execute("select reason, count(*) from ingest.ingest_error group by 1").fetchall())
        assert reasons == {"topic_mismatch": 4, "missing_field": 3, "invalid_json": 2, "value_out_of_range": 1}
    finally:
        device.close()
        observer.close()
        code = bridge.stop()
    assert code == 0, bridge.tail()
    stats = bridge.stats()
    assert stats["received"] == stats["stored"] == 510
    # never more taken and unacknowledged than the window, though the stream outran the bridge
    assert 50 <= stats["max_in_flight"] <= 51  # 51: the broker sent one past it (Mosquitto 2.0.11)


def test_startup_then_telemetry_of_the_provisioned_device(
    fresh_db: DatabaseTarget, system_broker: str, prefix: str, tmp_path: Path
) -> None:
    serial = "SN-MQTT-1"
    bridge = _bridge(fresh_db, system_broker, prefix, tmp_path).start()
    device = MqttClient(system_broker, f"{prefix}-device", subscribe=(f"{prefix}/{serial}/results",))
    try:
        device.wait_published([device.publish(f"{prefix}/{serial}/startup", orjson.dumps(startup(SECRET, serial)))], 10)
        (answer,) = device.wait_messages(1, 30)
        provisioned = answer.json()
        assert provisioned["status"] == "provisioned"
        device_id = provisioned["device_id"]
        assert device_id >= 2**31

        device.client.subscribe(f"{prefix}/{device_id}/results", qos=1)
        time.sleep(0.5)
        event = telemetry(device_id, "platform_extension_mm", 42)
        device.wait_published([device.publish(f"{prefix}/{device_id}/telemetry", orjson.dumps(event))], 10)
        answers = device.wait_messages(2, 30)
        assert answers[1].topic == f"{prefix}/{device_id}/results"
        assert answers[1].json()["status"] == "ok"
    finally:
        device.close()
        bridge.stop()
    assert _counts(fresh_db.url) == {"raw": 2, "facts": 1, "errors": 0, "startups": 1}


def test_messages_published_while_the_bridge_is_down_wait_in_its_session(
    fresh_db: DatabaseTarget, system_broker: str, prefix: str, tmp_path: Path
) -> None:
    """Clean start off, a fixed client id and a session expiry: the broker keeps the subscription and
    queues for the bridge while it is stopped; the restarted bridge stores all of it."""
    bridge = _bridge(fresh_db, system_broker, prefix, tmp_path).start()
    assert bridge.stop() == 0
    device = MqttClient(system_broker, f"{prefix}-device")
    try:
        events = [telemetry(5, "battery_charge", float(i)) for i in range(100)]
        infos = [device.publish(f"{prefix}/5/telemetry", orjson.dumps(e)) for e in events]
        device.wait_published(infos, 20)
    finally:
        device.close()
    assert _counts(fresh_db.url)["raw"] == 0
    bridge.start()
    try:
        assert wait_stable(lambda: _counts(fresh_db.url)["raw"], 30) == 100
    finally:
        bridge.stop()
    assert _counts(fresh_db.url)["facts"] == 100


def test_two_bridges_share_the_subscription(
    fresh_db: DatabaseTarget, system_broker: str, prefix: str, tmp_path: Path
) -> None:
    bridges = [_bridge(fresh_db, system_broker, prefix, tmp_path, name).start() for name in ("bridge-a", "bridge-b")]
    device = MqttClient(system_broker, f"{prefix}-device")
    try:
        infos = []
        for i in range(1000):
            device_id = 1 + i % 20
            event = telemetry(device_id, "platform_height_mm", i % 200, time.time() - 100 + i * 0.001)
            infos.append(device.publish(f"{prefix}/{device_id}/telemetry", orjson.dumps(event)))
        device.wait_published(infos, 30)
        assert wait_stable(lambda: _counts(fresh_db.url)["raw"], 60) == 1000
    finally:
        device.close()
        codes = [b.stop() for b in bridges]
    assert codes == [0, 0]
    stored = [b.stats()["stored"] for b in bridges]
    assert sum(stored) == 1000 and min(stored) > 0, stored  # both took a share, nothing twice
    assert _counts(fresh_db.url)["facts"] == 1000


def test_without_mqtt_url_the_command_says_what_to_set() -> None:
    env = {"PATH": "/usr/bin:/bin", "DEV_MODE": "1", "HOME": "/tmp"}
    proc = subprocess.run(
        iot_platform("mqtt", "--no-migrate"),
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "set MQTT_URL" in proc.stderr


def test_a_message_published_again_is_answered_from_the_ledger_and_packet_ids_are_no_identity(
    fresh_db: DatabaseTarget, system_broker: str, prefix: str, tmp_path: Path
) -> None:
    """The same message twice (a device that lost its answer publishes it again): one raw row, the
    same answer. Two different messages under the same client id and packet id, one session after
    the other: both stored, so client id + packet id could not have been the key."""
    bridge = _bridge(fresh_db, system_broker, prefix, tmp_path).start()
    topic = f"{prefix}/9/telemetry"
    same = orjson.dumps(telemetry(9, "battery_charge", 40.0))
    packet_ids = []
    try:
        for payload in (same, same, orjson.dumps(telemetry(9, "battery_charge", 41.0))):
            device = MqttClient(system_broker, f"{prefix}-device", subscribe=(f"{prefix}/9/results",))
            try:
                info = device.publish(topic, payload, correlation=b"req-1")
                device.wait_published([info], 10)
                packet_ids.append(info.mid)
                (answer,) = device.wait_messages(1, 20)
                packet_ids.append(answer.json()["raw_id"])
            finally:
                device.close()
    finally:
        assert bridge.stop() == 0
    first_mid, first_raw, again_mid, again_raw, other_mid, other_raw = packet_ids
    assert first_mid == again_mid == other_mid  # a new session numbers its packets from 1 again
    assert again_raw == first_raw and other_raw != first_raw
    assert _counts(fresh_db.url) == {"raw": 2, "facts": 2, "errors": 0, "startups": 0}
    assert bridge.stats()["replayed"] == 1
