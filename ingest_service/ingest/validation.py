"""The rules of one decoded event on its own: shape, record type and range, timestamp, startup token.

Pure: no I/O, no clock of its own. Called only by the decide stage (decide.py), which adds the
rules that need the database's state (failed startups of a serial, the device registry).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from typing import Any

from ingest_service.ingest.catalog import RecordTypeCatalog

EPOCH_2000 = 946_684_800.0
LEGACY_DEVICE_ID_MAX = 2**31 - 1
DEVICE_ID_MAX = 2**63 - 1
STARTUP = "device_startup"
TELEMETRY_FIELDS = ("device_id", "event_type", "value", "timestamp")
SERIAL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")
FIRMWARE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,63}")
HEX_TOKEN = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(slots=True, frozen=True)
class Telemetry:
    device_id: int
    record_type_id: int
    record_time: float  # epoch seconds
    value: float


@dataclass(slots=True, frozen=True)
class Startup:
    serial: str
    started_at: float
    firmware: str | None
    device_id: int | None  # an upgraded legacy device names the id it keeps


@dataclass(slots=True, frozen=True)
class Rejection:
    status: str  # invalid | unauthorized
    reason: str
    detail: str
    event_type: str | None = None
    device_id: int | None = None


Outcome = Telemetry | Startup | Rejection


def provision_token(secret: str, serial: str) -> str:
    return hmac.new(secret.encode(), serial.encode(), hashlib.sha256).hexdigest()


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= 80 else text[:77] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_float(value: int | float) -> float:
    """An integer beyond the float range (10**400 is valid JSON) becomes an infinity, never an OverflowError."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _safe_label(value: Any) -> str | None:
    """A claimed event type, kept in ingest_error only when it is a short printable string."""
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable():
        return value
    return None


def _check_timestamp(value: Any, now: float, max_skew: float) -> Rejection | float:
    if not _is_number(value):
        return Rejection("invalid", "wrong_type", f"timestamp must be epoch seconds (a number), got {_describe(value)}")
    ts = _as_float(value)
    if not math.isfinite(ts):
        return Rejection("invalid", "invalid_timestamp", "timestamp must be a finite number")
    if ts < EPOCH_2000:
        return Rejection("invalid", "timestamp_too_old", f"timestamp {ts} is before 2000-01-01")
    if ts > now + max_skew:
        return Rejection(
            "invalid",
            "timestamp_in_future",
            f"timestamp {ts} is more than {max_skew:g} s ahead of the server clock",
        )
    return ts


def _device_id(value: Any) -> Rejection | int:
    if not isinstance(value, int) or isinstance(value, bool):
        return Rejection("invalid", "wrong_type", f"device_id must be an integer, got {_describe(value)}")
    if not 1 <= value <= DEVICE_ID_MAX:
        return Rejection("invalid", "device_id_out_of_range", f"device_id {_describe(value)} is outside 1..2^63-1")
    return value


_EXACT_INT = 2**53


def validate_telemetry(event: dict[str, Any], catalog: RecordTypeCatalog, now: float, max_skew: float) -> Outcome:
    # Fast path for the common, well-formed event (exact types, in range): the same verdict as the
    # checks below, in a fraction of the time. Anything unusual falls through to them for its reason.
    device_id, event_type = event.get("device_id"), event.get("event_type")
    if type(device_id) is int and type(event_type) is str and 1 <= device_id <= DEVICE_ID_MAX:
        record_type = catalog.get(event_type)
        value, ts = event.get("value"), event.get("timestamp")
        tv, tt = type(value), type(ts)
        if (
            record_type is not None
            and (tv is float or (tv is int and -_EXACT_INT < value < _EXACT_INT))  # type: ignore[operator]
            and (tt is float or (tt is int and -_EXACT_INT < ts < _EXACT_INT))  # type: ignore[operator]
        ):
            v, t = float(value), float(ts)  # type: ignore[arg-type]
            # NaN fails every comparison, infinities fail the ranges: both take the slow path.
            if record_type.min_value <= v <= record_type.max_value and EPOCH_2000 <= t <= now + max_skew:
                return Telemetry(device_id, record_type.id, t, v)
    return _validate_telemetry_checked(event, catalog, now, max_skew)


def _validate_telemetry_checked(
    event: dict[str, Any], catalog: RecordTypeCatalog, now: float, max_skew: float
) -> Outcome:
    event_type = event.get("event_type")
    label = _safe_label(event_type)
    missing = [name for name in TELEMETRY_FIELDS if event.get(name) is None]
    if missing:
        return Rejection("invalid", "missing_field", f"missing required field(s): {', '.join(missing)}", label)
    if not isinstance(event_type, str):
        return Rejection("invalid", "wrong_type", f"event_type must be a string, got {_describe(event_type)}")
    record_type = catalog.get(event_type)
    if record_type is None:
        return Rejection("invalid", "unknown_event_type", f"unknown event_type {_describe(event_type)}", label)

    device_id = _device_id(event["device_id"])
    if isinstance(device_id, Rejection):
        return Rejection(device_id.status, device_id.reason, device_id.detail, label)
    value = event["value"]
    if not _is_number(value):
        return Rejection("invalid", "wrong_type", f"value must be a number, got {_describe(value)}", label, device_id)
    value = _as_float(value)
    if not math.isfinite(value) or not record_type.min_value <= value <= record_type.max_value:
        return Rejection(
            "invalid",
            "value_out_of_range",
            f"{event_type} value {value:g} is outside {record_type.min_value:g}..{record_type.max_value:g}"
            f" {record_type.unit}",
            label,
            device_id,
        )
    ts = _check_timestamp(event["timestamp"], now, max_skew)
    if isinstance(ts, Rejection):
        return Rejection(ts.status, ts.reason, ts.detail, label, device_id)
    return Telemetry(device_id, record_type.id, ts, value)


def validate_startup(event: dict[str, Any], secret: str, now: float, max_skew: float, replay_window: float) -> Outcome:
    missing = [name for name in ("serial", "provision_token", "timestamp") if event.get(name) is None]
    if missing:
        return Rejection("invalid", "missing_field", f"missing required field(s): {', '.join(missing)}", STARTUP)
    serial, token = event["serial"], event["provision_token"]
    if not isinstance(serial, str) or not SERIAL_PATTERN.fullmatch(serial):
        return Rejection(
            "invalid",
            "invalid_serial",
            "serial must be 1-64 characters of letters, digits and . _ : -",
            STARTUP,
        )
    firmware = event.get("firmware")
    if firmware is not None and (not isinstance(firmware, str) or not FIRMWARE_PATTERN.fullmatch(firmware)):
        return Rejection(
            "invalid",
            "wrong_type",
            "firmware must be 1-64 characters of letters, digits and . _ + -",
            STARTUP,
        )
    device_id = event.get("device_id")
    if device_id is not None:
        device_id = _device_id(device_id)
        if isinstance(device_id, Rejection):
            return Rejection(device_id.status, device_id.reason, device_id.detail, STARTUP)
        if device_id > LEGACY_DEVICE_ID_MAX:
            return Rejection(
                "invalid",
                "device_id_out_of_range",
                "only a legacy device id (1..2^31-1) may be named by a startup; provisioned ids are assigned",
                STARTUP,
                device_id,
            )
    ts = _check_timestamp(event["timestamp"], now, max_skew)
    if isinstance(ts, Rejection):
        return Rejection(ts.status, ts.reason, ts.detail, STARTUP, device_id)
    # Checked after the shape so a malformed event gets its real reason, and before the replay
    # window so a stale token cannot be used to probe for valid serials.
    if not isinstance(token, str) or not hmac.compare_digest(
        provision_token(secret, serial).encode(), token.lower().encode("utf-8", "replace")
    ):
        return Rejection(
            "unauthorized", "invalid_token", "provision_token does not match the serial", STARTUP, device_id
        )
    if ts < now - replay_window:
        return Rejection(
            "unauthorized",
            "stale_startup",
            f"startup timestamp is older than the {replay_window:g} s replay window",
            STARTUP,
            device_id,
        )
    return Startup(serial, ts, firmware, device_id)


def validate(
    event: Any,
    catalog: RecordTypeCatalog,
    *,
    secret: str,
    now: float,
    max_skew: float,
    replay_window: float,
) -> Outcome:
    if not isinstance(event, dict):
        kind = "array" if isinstance(event, list) else type(event).__name__
        return Rejection("invalid", "not_an_object", f"each event must be a JSON object, got {kind}")
    if event.get("event_type") == STARTUP:
        return validate_startup(event, secret, now, max_skew, replay_window)
    return validate_telemetry(event, catalog, now, max_skew)
