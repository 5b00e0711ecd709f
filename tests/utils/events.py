"""Event factories for tests."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any


def telemetry(
    device_id: Any = 1, event_type: Any = "platform_extension_mm", value: Any = 12, timestamp: Any = None, **extra: Any
) -> dict[str, Any]:
    event = {
        "device_id": device_id,
        "event_type": event_type,
        "value": value,
        "timestamp": time.time() if timestamp is None else timestamp,
    }
    event.update(extra)
    return event


def token(secret: str, serial: str) -> str:
    return hmac.new(secret.encode(), serial.encode(), hashlib.sha256).hexdigest()


def startup(secret: str, serial: str = "SN-000001", **extra: Any) -> dict[str, Any]:
    event = {
        "event_type": "device_startup",
        "serial": serial,
        "provision_token": token(secret, serial),
        "timestamp": time.time(),
        "firmware": "2.0.0",
    }
    event.update(extra)
    return event
