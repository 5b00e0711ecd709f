"""The transport over MQTT: each line one QoS 1 message on its device's topic; the PUBACK is the answer.

Topics: `devices/{serial}/startup` for a `device_startup`, `devices/{device_id}/telemetry` for any
other line naming an integer `device_id`, and `unknown` in place of a serial or id that a line does
not have (not JSON, or malformed on purpose) or that cannot be a topic level: such a line is still
published, so the bridge can keep it with its reason, as the API does. The payload is the line's bytes, verbatim.

Until a bridge answers on `devices/{id}/results`, the broker's PUBACK is the acknowledgement: the
line's result is `{"status": "published", "topic": ...}`. A PUBACK with an error reason code (MQTT
5, e.g. 0x87 not authorized) makes the line undelivered with that reason. QoS 1 is at least once: a
message in flight when the connection drops is sent again (by paho on reconnect, or with its batch
on retry), so a receiver may see it twice.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from publisher.delivery.config import MqttOptions
from publisher.delivery.items import Line, Outcome, Undelivered
from publisher.delivery.transport import Retryable

QOS = 1
UNKNOWN_DEVICE = "unknown"
_NOT_A_TOPIC_LEVEL = set("/+#\0")


def _topic_level(value: Any) -> str | None:
    """`value` as one topic level, or None when it cannot be one (empty, or a wildcard or separator in it)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = str(value)
    return text if text and not _NOT_A_TOPIC_LEVEL & set(text) else None


def topic_for(raw: bytes, prefix: str = "") -> str:
    """The topic a device would publish this line on."""
    try:
        event = json.loads(raw)
    except ValueError:
        event = None
    if isinstance(event, dict):
        if event.get("event_type") == "device_startup":
            serial = _topic_level(event.get("serial")) if isinstance(event.get("serial"), str) else None
            return f"{prefix}devices/{serial or UNKNOWN_DEVICE}/startup"
        device_id = event.get("device_id")
        if isinstance(device_id, int):
            level = _topic_level(device_id)
            if level is not None:
                return f"{prefix}devices/{level}/telemetry"
    return f"{prefix}devices/{UNKNOWN_DEVICE}/telemetry"


class MqttTransport:
    """One paho client (its network loop on its own thread; `publish` is thread-safe), MQTT 5."""

    def __init__(self, options: MqttOptions, timeout: float, max_queued: int = 0) -> None:
        url = urlsplit(options.mqtt_url)
        self.where = f"{url.hostname}:{url.port or (8883 if url.scheme == 'mqtts' else 1883)}"
        self.prefix = options.mqtt_topic_prefix
        self.timeout = timeout
        self._connected = threading.Event()
        self._refused: dict[int, ReasonCode] = {}
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        if url.username is not None:
            password = unquote(url.password) if url.password is not None else None
            client.username_pw_set(unquote(url.username), password)
        if url.scheme == "mqtts":
            client.tls_set()
        # Bounded: while the broker is away, paho keeps what was published for the reconnect.
        client.max_queued_messages_set(max_queued)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.connect_async(url.hostname or "127.0.0.1", url.port or (8883 if url.scheme == "mqtts" else 1883))
        client.loop_start()  # connects, and reconnects, in the background
        self.client = client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        if not reason.is_failure:
            self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self._connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        # Called before the message counts as published, so `send` sees the refusal when its wait ends.
        if reason.is_failure:
            with self._lock:
                self._refused[mid] = reason

    def send(self, lines: list[Line]) -> list[Outcome]:
        deadline = time.monotonic() + self.timeout
        # Not connected: publish nothing (paho would queue it and send it again on reconnect, on
        # top of the batch's own retry); the batch is retried with backoff instead.
        if not self._connected.wait(self.timeout):
            raise Retryable("mqtt_not_connected", f"not connected to the MQTT broker at {self.where}")
        topics = [topic_for(line.raw, self.prefix) for line in lines]
        infos = [self.client.publish(topic, line.raw, qos=QOS) for topic, line in zip(topics, lines, strict=True)]
        for info in infos:
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # the connection dropped, or paho's queue is full
                reason = info.rc.name.lower().removeprefix("mqtt_err_")
                raise Retryable(f"mqtt_{reason}", f"publish failed: {mqtt.error_string(info.rc)}")
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise Retryable("mqtt_timeout", f"no PUBACK from {self.where} within {self.timeout:g}s")
        outcomes: list[Outcome] = []
        with self._lock:
            for topic, info in zip(topics, infos, strict=True):
                refused = self._refused.pop(info.mid, None)
                if refused is not None:
                    outcomes.append(Undelivered(f"mqtt_{refused.getName().lower().replace(' ', '_')}"))
                else:
                    outcomes.append({"status": "published", "topic": topic})
        return outcomes

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
