"""The MQTT transport against the machine's Mosquitto (127.0.0.1:1883), read back by a plain subscriber.

Each test publishes under a topic prefix of its own, so nothing else on the shared broker (an MQTT
bridge's tests, say) sees these messages, and these tests see nothing else.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from publisher.delivery.mqtt_transport import topic_for
from publisher.pipe_to_api import main
from tests.utils.processes import free_port

REPO = Path(__file__).resolve().parents[2]
BROKER = ("127.0.0.1", 1883)
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@contextmanager
def private_broker(tmp_path: Path, port: int, acl: str | None = None) -> Iterator[None]:
    """A Mosquitto of the test's own on `port` (optionally with an ACL file), stopped afterwards."""
    conf = tmp_path / f"mosquitto-{port}.conf"
    # Started as root, Mosquitto would switch to its own user, who cannot read the test's tmp_path.
    user = pwd.getpwuid(os.getuid()).pw_name
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", f"user {user}"]
    if acl is not None:
        (tmp_path / "acl").write_text(acl)
        lines.append(f"acl_file {tmp_path / 'acl'}")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def subscriber(prefix: str) -> Iterator[list[tuple[str, bytes, int]]]:
    """Every message under `prefix` (topic, payload, QoS), from a QoS 1 subscription made before it yields."""
    received: list[tuple[str, bytes, int]] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.on_connect = lambda c, userdata, flags, reason, props: c.subscribe(f"{prefix}devices/#", qos=1)
    client.on_subscribe = lambda c, userdata, mid, reasons, props: subscribed.set()
    client.on_message = lambda c, userdata, msg: received.append((msg.topic, msg.payload, msg.qos))
    client.connect(*BROKER)
    client.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK from the broker"
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def wait_for(received: list, n: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while len(received) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}/"


def telemetry(i: int) -> bytes:
    return json.dumps(
        {"device_id": i % 5 + 1, "event_type": "battery_charge", "value": 50.5, "timestamp": 1_700_000_000 + i}
    ).encode()


def test_topic_for_each_kind_of_line() -> None:
    assert topic_for(telemetry(2)) == "devices/3/telemetry"
    assert (
        topic_for(b'{"event_type": "device_startup", "serial": "SN-P000001"}', "p/") == "p/devices/SN-P000001/startup"
    )
    # An upgrade names its legacy id too, but a startup goes to its serial's topic.
    assert topic_for(b'{"event_type": "device_startup", "serial": "SN-000007", "device_id": 7}') == (
        "devices/SN-000007/startup"
    )
    assert topic_for(b'{"device_id": 4, "value": 123}') == "devices/4/telemetry"  # malformed, but names its device
    for nameless in (b"{}", b"not json", b"[1]", b'{"device_id": "7"}', b'{"device_id": true}'):
        assert topic_for(nameless) == "devices/unknown/telemetry"
    assert topic_for(b'{"event_type": "device_startup", "serial": "a/+"}') == "devices/unknown/startup"


def test_pipe_publishes_every_line_verbatim_on_its_topic_with_qos_1() -> None:
    own = prefix()
    lines = [telemetry(i) for i in range(300)]
    lines[7] = b'{"event_type": "device_startup", "serial": "SN-P000001", "provision_token": "x", "timestamp": 1.0}'
    lines[8] = b"{}"
    lines[9] = b"this is not json"
    stdin = io.BytesIO(b"".join(line + b"\n" for line in lines))
    stdout, stderr = io.StringIO(), io.StringIO()
    args = ["--transport", "mqtt", "--mqtt-topic-prefix", own, "--batch", "64", "--concurrency", "2", "--summary-json"]
    with subscriber(own) as received:
        status = main(args, stdin=stdin, stdout=stdout, stderr=stderr)
        wait_for(received, len(lines))
    assert status == 0, stderr.getvalue()
    assert Counter((topic, payload) for topic, payload, _ in received) == Counter(
        (topic_for(line, own), line) for line in lines
    )
    assert {qos for _, _, qos in received} == {1}
    summary = json.loads(stdout.getvalue())
    assert summary["by_status"] == {"published": 300}
    assert (summary["accepted"], summary["rejected"], summary["undelivered"]) == (300, 0, 0)


def test_unreachable_broker_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    dead = tmp_path / "dead.ndjson"
    lines = [telemetry(i) for i in range(5)]
    stdin = io.BytesIO(b"".join(line + b"\n" for line in lines))
    stdout, stderr = io.StringIO(), io.StringIO()
    args = ["--transport", "mqtt", "--mqtt-url", f"mqtt://127.0.0.1:{free_port()}", "--timeout", "0.3"]
    args += ["--max-retries", "1", "--backoff-initial", "0.01", "--dead-letter", str(dead), "--summary-json"]
    status = main(args, stdin=stdin, stdout=stdout, stderr=stderr)
    assert status == 1
    assert dead.read_bytes() == b"".join(line + b"\n" for line in lines)
    summary = json.loads(stdout.getvalue())
    assert summary["undelivered_by_reason"] == {"mqtt_not_connected": 5}
    assert summary["retried"] == 1
    assert "not connected to the MQTT broker at 127.0.0.1:" in stderr.getvalue()


def test_simulator_publishes_over_mqtt() -> None:
    own = prefix()
    args = ["--transport", "mqtt", "--mqtt-topic-prefix", own, "--count", "500", "--rate", "0", "--seed", "4"]
    args += ["--start-time", "1700000000", "--provisioned-devices", "2", "--upgrade-rate", "0.01", "--summary-json"]
    with subscriber(own) as received:
        done = subprocess.run(
            [sys.executable, "-m", "publisher.simulate", *args], cwd=REPO, capture_output=True, timeout=60
        )
        wait_for(received, 500)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["by_status"] == {"published": 500}
    assert len(received) == 500
    startups = [json.loads(payload) for topic, payload, _ in received if topic.endswith("/startup")]
    assert {"SN-P000001", "SN-P000002"} <= {s["serial"] for s in startups}
    for topic, payload, _ in received:
        assert topic == topic_for(payload, own)
    # Until a bridge answers on devices/{id}/results, a brand-new device learns no id: it stays silent.
    assert b"0 of 2 provisioned devices got their id" in done.stderr


def test_a_message_the_broker_refuses_is_undelivered_with_the_pubacks_reason(tmp_path: Path) -> None:
    port = free_port()
    dead = tmp_path / "dead.ndjson"
    lines = [telemetry(0), b'{"event_type": "device_startup", "serial": "SN-P000001"}', telemetry(1)]
    stdin = io.BytesIO(b"".join(line + b"\n" for line in lines))
    stdout, stderr = io.StringIO(), io.StringIO()
    args = ["--transport", "mqtt", "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--dead-letter", str(dead)]
    # Anonymous clients may write telemetry only: the startup is refused (MQTT 5 PUBACK 0x87).
    with private_broker(tmp_path, port, acl="topic write devices/+/telemetry\n"):
        status = main([*args, "--summary-json", "--verbose"], stdin=stdin, stdout=stdout, stderr=stderr)
    assert status == 1
    summary = json.loads(stdout.getvalue())
    assert summary["by_status"] == {"published": 2}
    assert summary["undelivered_by_reason"] == {"mqtt_not_authorized": 1}
    assert summary["retried"] == 0  # a refusal is an answer, not a failure to retry
    assert dead.read_bytes() == lines[1] + b"\n"


def test_a_broker_that_comes_up_late_gets_everything(tmp_path: Path) -> None:
    port = free_port()
    lines = [telemetry(i) for i in range(50)]
    stdin = io.BytesIO(b"".join(line + b"\n" for line in lines))
    stdout, stderr = io.StringIO(), io.StringIO()
    args = ["--transport", "mqtt", "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--timeout", "0.5"]
    args += ["--backoff-initial", "0.2", "--backoff-max", "1", "--summary-json"]
    runner = threading.Thread(target=main, args=(args, stdin, stdout, stderr))
    runner.start()
    time.sleep(1.5)  # a few attempts find no broker
    with private_broker(tmp_path, port):
        runner.join(timeout=60)
    assert not runner.is_alive()
    summary = json.loads(stdout.getvalue())
    assert summary["by_status"] == {"published": 50} and summary["undelivered"] == 0
    assert summary["retried"] >= 1
    assert "not connected to the MQTT broker" in stderr.getvalue()
