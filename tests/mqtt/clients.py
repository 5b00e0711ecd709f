"""Real MQTT participants for the tests: the bridge as a process (`iot-platform mqtt`), and paho-mqtt
clients on their own network thread playing devices and observers of the results topics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ingest_service.core.config import PROJECT_ROOT
from platform_cli.processes import iot_platform
from tests.reliability.procs import SECRET, wait_for


@dataclass
class BridgeProcess:
    """`iot-platform mqtt` against one database and broker, with its own client id and topic prefix."""

    database_url: str
    mqtt_url: str
    prefix: str
    client_id: str
    log_path: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            DEV_MODE="0",
            PROVISION_SECRET=SECRET,
            LOG_LEVEL="INFO",
            REQUEST_TIMEOUT_SECONDS="5",
            MQTT_URL=self.mqtt_url,
            MQTT_CLIENT_ID=self.client_id,
            MQTT_TOPIC_PREFIX=self.prefix,
            # Long enough for the test, short enough that sessions left on the shared broker go away.
            MQTT_SESSION_EXPIRY_SECONDS="300",
        )
        env.update(self.env_overrides)
        return env

    def _lines(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for text in self.log_path.read_text(errors="replace").splitlines():
            if text.startswith("{"):
                try:
                    out.append(json.loads(text))
                except ValueError:
                    pass
        return out

    def _count(self, message: str) -> int:
        return sum(1 for line in self._lines() if line.get("message") == message)

    def start(self, timeout: float = 60, migrate: bool = False) -> BridgeProcess:
        subscribed_before = self._count("subscribed")
        command = iot_platform("mqtt") + ([] if migrate else ["--no-migrate"])
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=self.env(),
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        process = self.process
        ready = wait_for(lambda: self._count("subscribed") > subscribed_before or process.poll() is not None, timeout)
        if not ready or process.poll() is not None:
            raise RuntimeError(f"bridge not subscribed (exit {process.poll()}):\n{self.tail()}")
        return self

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM: finish what it took, then leave. Returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def lines(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self._lines() if line.get("message") == message]

    def stats(self) -> dict[str, Any]:
        """The last statistics line the bridge logged (every 10 s, and when it stops)."""
        lines = [line for line in self._lines() if line.get("message") in ("mqtt bridge stats", "mqtt bridge stopped")]
        assert lines, f"the bridge logged no statistics:\n{self.tail()}"
        return lines[-1]


@dataclass
class Received:
    topic: str
    payload: bytes
    correlation: bytes | None

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttClient:
    """A paho-mqtt 2.x client (MQTT 5, clean start) on its own network thread: a device, or an
    observer of the results topics."""

    def __init__(self, url: str, client_id: str, subscribe: tuple[str, ...] = ()) -> None:
        parts = urlsplit(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        self.client.max_queued_messages_set(0)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.connect_reason: ReasonCode | None = None
        self.subscribe_reasons: list[ReasonCode] = []
        self.received: list[Received] = []
        self.refused_mids: dict[int, str] = {}  # PUBACKs with a failure reason code (e.g. Not authorized)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"{client_id}: no CONNACK")
        if subscribe and self.connect_reason is not None and not self.connect_reason.is_failure:
            self.client.subscribe([(t, 1) for t in subscribe])
            if not self._subscribed.wait(10):
                raise RuntimeError(f"{client_id}: no SUBACK")

    def _on_connect(self, client, userdata, flags, reason, props) -> None:
        self.connect_reason = reason
        self._connected.set()

    def _on_subscribe(self, client, userdata, mid, reasons, props) -> None:
        self.subscribe_reasons = list(reasons)
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        with self._lock:
            self.received.append(Received(message.topic, message.payload, correlation))

    def _on_publish(self, client, userdata, mid, reason, props) -> None:
        if reason.is_failure:
            with self._lock:
                self.refused_mids[mid] = str(reason)

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        correlation: bytes | None = None,
        content_type: str | None = None,
    ) -> mqtt.MQTTMessageInfo:
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        if content_type is not None:
            props.ContentType = content_type
        return self.client.publish(topic, payload, qos=qos, properties=props)

    def wait_published(self, infos: list[mqtt.MQTTMessageInfo], timeout: float) -> None:
        """Wait until the broker acknowledged every publish (PUBACK)."""
        assert wait_for(lambda: all(info.is_published() for info in infos), timeout, 0.1), (
            f"{sum(not i.is_published() for i in infos)} of {len(infos)} publishes not acknowledged by the broker"
        )

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def wait_messages(self, count: int, timeout: float) -> list[Received]:
        wait_for(lambda: len(self.received) >= count, timeout, 0.1)
        return self.messages()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_stable(read: Any, timeout: float, quiet: float = 1.5) -> Any:
    """Poll `read()` until its value stops changing for `quiet` seconds (or the timeout)."""
    value, since = read(), time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = read()
        if current != value:
            value, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return value
