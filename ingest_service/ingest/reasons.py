"""Every reason code the ingest API answers with: the one list the code, the database and dbt share.

`Reason` is why an item was stored as an `ingest.ingest_error` (the answer's `reason`). Its members
are rows of `ingest.ingest_error_reason`, written by the migrations (reasons are data, like record
types), and dbt tests `ingest_error.reason` against that table. A new reason is a member here plus
a migration that inserts its row the way 0004 inserts all of them (`on conflict do nothing`, so a
database created after the release, whose 0004 already wrote it, is left alone); the test suite
checks the table against this enumeration.

`Refusal` is why a whole body was refused before anything was stored (the client keeps and retries
it): those never reach the database.
"""

from __future__ import annotations

from enum import StrEnum


class _Described(StrEnum):
    """A reason code (the value) with a one-line description for people (the table's `description`)."""

    description: str

    def __new__(cls, code: str, description: str) -> _Described:
        member = str.__new__(cls, code)
        member._value_ = code
        member.description = description
        return member


class Reason(_Described):
    # the body, before any event is read
    INVALID_JSON = "invalid_json", "the body, NDJSON line or array element is not valid JSON (or not UTF-8)"
    EMPTY_BODY = "empty_body", "the body or NDJSON line is empty"
    EMPTY_BATCH = "empty_batch", "the JSON array holds no events"
    NOT_AN_OBJECT = "not_an_object", "an event is not a JSON object"
    # the event's shape and values
    MISSING_FIELD = "missing_field", "a required field is missing or null"
    WRONG_TYPE = "wrong_type", "a field has the wrong JSON type or format"
    UNKNOWN_EVENT_TYPE = "unknown_event_type", "event_type names no record type"
    VALUE_OUT_OF_RANGE = "value_out_of_range", "the value is not finite or outside its record type's valid range"
    INVALID_TIMESTAMP = "invalid_timestamp", "timestamp is not a finite number"
    TIMESTAMP_TOO_OLD = "timestamp_too_old", "timestamp is before 2000-01-01"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future", "timestamp is more than MAX_CLOCK_SKEW_SECONDS ahead of the server"
    DEVICE_ID_OUT_OF_RANGE = (
        "device_id_out_of_range",
        "device_id is outside 1..2^63-1, or a startup names a provisioned (not a legacy) id",
    )
    # devices and provisioning
    UNKNOWN_DEVICE = "unknown_device", "telemetry for a provisioned device id that was never provisioned"
    INVALID_SERIAL = "invalid_serial", "serial is not 1-64 characters of letters, digits and . _ : -"
    SERIAL_CONFLICT = "serial_conflict", "the startup's serial already belongs to another device"
    DEVICE_CONFLICT = "device_conflict", "the startup's device is provisioned with another serial"
    INVALID_TOKEN = "invalid_token", "provision_token is not the HMAC of the serial (unauthorized)"
    STALE_STARTUP = "stale_startup", "the startup is older than the replay window (unauthorized)"
    TOO_MANY_FAILED_STARTUPS = "too_many_failed_startups", "too many failed startups for the serial (rate limited)"
    # a door's own rule (the MQTT door: the topic names the device)
    TOPIC_MISMATCH = "topic_mismatch", "an MQTT message names another device or serial than its topic"
    # the write path itself
    INTERNAL_ERROR = "internal_error", "the item could not be stored as sent; it is kept as text"


class Refusal(_Described):
    BODY_TOO_LARGE = "body_too_large", "the body exceeds MAX_BODY_BYTES (413)"
    INFLATED_TOO_LARGE = "inflated_too_large", "the gzip body inflates beyond MAX_INFLATED_BYTES (413)"
    TOO_MANY_ITEMS = "too_many_items", "the batch holds more than MAX_BATCH_ITEMS items (413)"
    UNSUPPORTED_ENCODING = "unsupported_encoding", "Content-Encoding is neither gzip nor identity (415)"
    INVALID_GZIP = "invalid_gzip", "the gzip stream is corrupt or truncated (400)"
    CLIENT_DISCONNECTED = "client_disconnected", "the client closed the connection mid-body (400)"
    DATABASE_UNAVAILABLE = "database_unavailable", "the database could not take the request; retry (503)"
