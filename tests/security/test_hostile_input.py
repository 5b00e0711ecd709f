"""A corpus of every class of bad input a fleet or an attacker sends. Each case gets its documented
HTTP status and reason (README), never a 500; what is acknowledged is in the ledger, as sent, with
exactly one outcome; what is refused (400/413/415) stored nothing."""

from __future__ import annotations

import gzip
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest.body import MAX_GZIP_MEMBERS
from ingest_service.main import create_app
from tests.ingest_service.conftest import SECRET, make_settings
from tests.security.ledger_checks import check_answer_shape, check_stored
from tests.utils.db import create_fresh_database, drop_database
from tests.utils.events import startup, telemetry, token
from tests.utils.processes import running_api

JSON = "application/json"
NDJSON = "application/x-ndjson"
MB = 1024 * 1024
NOW = time.time()
SQL = [
    "'; drop table ingest.raw_record; --",
    "1 or 1=1",
    "$$; select pg_sleep(30); $$",
    "\\'); delete from ingest.device; --",
    "x' union select payload from ingest.raw_record --",
]


@dataclass
class Case:
    id: str
    body: bytes
    status: int
    # single item: (item status, reason); batch: one (status, reason) per item; refused: (None, reason)
    expect: tuple[str | None, str | None] | list[tuple[str, str | None]]
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": JSON})
    # what each stored row must hold: the body (single), the lines (NDJSON) or the elements (array); None: skip
    sent: list[Any] | None = None
    stored: bool = True


_devices = itertools.count(1000)


def ev(**fields: Any) -> dict[str, Any]:
    """A valid telemetry event of a device of its own (so valid cases never repeat each other's facts)."""
    base = telemetry(device_id=next(_devices), value=10, timestamp=NOW - 60)
    base.update(fields)
    return base


def st(signed_serial: str, **fields: Any) -> dict[str, Any]:
    """A signed startup for `serial`, then `fields` overwrite whatever they name (the serial included)."""
    event = startup(SECRET, signed_serial)
    event.update(fields)
    return event


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def single(case_id: str, body: bytes | Any, status: int, item_status: str, reason: str | None, **kw: Any) -> Case:
    raw = body if isinstance(body, bytes) else dumps(body)
    kw.setdefault("sent", None if "gzip" in kw.get("headers", {}).get("content-encoding", "") else [raw])
    return Case(case_id, raw, status, (item_status, reason), **kw)


def invalid(case_id: str, body: bytes | Any, reason: str, **kw: Any) -> Case:
    return single(case_id, body, 422, "invalid", reason, **kw)


def ok(case_id: str, body: bytes | Any, **kw: Any) -> Case:
    return single(case_id, body, 200, "ok", None, **kw)


def refused(case_id: str, body: bytes, status: int, reason: str, headers: dict[str, str]) -> Case:
    return Case(case_id, body, status, (None, reason), headers=headers, stored=False)


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def cases() -> Iterator[Case]:
    # --- bodies that are not JSON (stored, as text or bytes, with their reason) -------------------
    yield invalid("empty-body", b"", "empty_body")
    yield invalid("whitespace-body", b" \n\t\r\n ", "empty_body")
    yield invalid("truncated-json", b'{"device_id": 1, "event_type": ', "invalid_json")
    yield invalid("plain-text", b"temperature=high", "invalid_json")
    yield invalid("trailing-garbage", dumps(ev()) + b" x", "invalid_json")
    yield invalid("two-objects-no-newline", dumps(ev()) + dumps(ev()), "invalid_json")
    yield invalid("single-quotes", b"{'device_id': 1}", "invalid_json")
    yield invalid("trailing-comma", b'{"device_id": 1,}', "invalid_json")
    yield invalid("comment", b'{"device_id": 1 /* x */}', "invalid_json")
    yield invalid("invalid-utf8", b"\xff\xfe\xfd", "invalid_json")
    yield invalid("invalid-utf8-in-string", b'{"device_id": 1, "event_type": "\xc3\x28"}', "invalid_json")
    yield invalid("overlong-utf8", b'{"event_type": "\xc0\xaf"}', "invalid_json")
    yield invalid("utf8-bom", b"\xef\xbb\xbf" + dumps(ev()), "invalid_json")
    yield invalid("utf16-body", json.dumps(ev()).encode("utf-16"), "invalid_json")
    yield invalid("raw-nul-byte-in-string", b'{"event_type": "a\x00b"}', "invalid_json")
    yield invalid("only-nul", b"\x00", "invalid_json")
    yield invalid("control-char-in-string", b'{"event_type": "a\x01b"}', "invalid_json")
    # --- nesting ------------------------------------------------------------------------------------
    yield invalid("nested-array-100k", nested(100_000), "invalid_json")
    yield invalid("nested-object-100k", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "invalid_json")
    yield invalid("nested-in-field-100k", b'{"device_id": ' + nested(100_000) + b"}", "invalid_json")
    for depth in (300, 1000, 1022):
        deep = b'{"device_id": ' + nested(depth) + b', "event_type": "platform_extension_mm", "value": 1, '
        deep += b'"timestamp": ' + str(NOW - 60).encode() + b"}"
        yield invalid(f"nested-device-id-{depth}", deep, "wrong_type")
        yield invalid(f"nested-object-{depth}", b'{"a":' * depth + b"1" + b"}" * depth, "missing_field")
        batch = b"[" + dumps(ev()) + b", " + nested(depth) + b"]"
        if depth < 900:
            yield Case(f"nested-batch-element-{depth}", batch, 200, [("ok", None), ("invalid", "not_an_object")])
        else:  # too deep to write an element out on its own: the body is kept whole, as sent
            yield invalid(f"nested-batch-element-{depth}", batch, "invalid_json")
    # --- numbers ------------------------------------------------------------------------------------
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"0x10", b"+1", b"01", b"1.", b".5"):
        yield invalid(f"number-literal-{literal.decode()}-as-value", _with(value=literal), "invalid_json")
        yield invalid(f"number-literal-{literal.decode()}-as-timestamp", _with(timestamp=literal), "invalid_json")
    huge = {
        "1e400": (b"1e400", "wrong_type", "value_out_of_range", "invalid_timestamp"),
        "-1e400": (b"-1e400", "wrong_type", "value_out_of_range", "invalid_timestamp"),
        "2**64": (str(2**64).encode(), "device_id_out_of_range", "value_out_of_range", "timestamp_in_future"),
        "2**70": (str(2**70).encode(), "device_id_out_of_range", "value_out_of_range", "timestamp_in_future"),
        "-2**70": (str(-(2**70)).encode(), "device_id_out_of_range", "value_out_of_range", "timestamp_too_old"),
        "2**63": (str(2**63).encode(), "device_id_out_of_range", "value_out_of_range", "timestamp_in_future"),
        "-2**63-1": (str(-(2**63) - 1).encode(), "device_id_out_of_range", "value_out_of_range", "timestamp_too_old"),
        "10**400": (str(10**400).encode(), "device_id_out_of_range", "value_out_of_range", "invalid_timestamp"),
        "-10**400": (str(-(10**400)).encode(), "device_id_out_of_range", "value_out_of_range", "invalid_timestamp"),
        "1e308": (b"1e308", "wrong_type", "value_out_of_range", "timestamp_in_future"),
    }
    for name, (literal, as_device, as_value, as_timestamp) in huge.items():
        yield invalid(f"huge-{name}-as-device-id", _with(device_id=literal), as_device)
        yield invalid(f"huge-{name}-as-value", _with(value=literal), as_value)
        yield invalid(f"huge-{name}-as-timestamp", _with(timestamp=literal), as_timestamp)
    yield invalid("int-5000-digits", _with(value=b"9" * 5000), "invalid_json")
    yield ok("tiny-1e-400-value", _with(value=b"1e-400"))
    yield ok("negative-zero-value", _with(value=b"-0.0"))
    yield ok("exponent-value", _with(value=b"1.5E1"))
    yield invalid("float-device-id", ev(device_id=1.0), "wrong_type")
    yield invalid("exponent-device-id", _with(device_id=b"1e2"), "wrong_type")
    # --- duplicate keys: the last one wins, as in every mainstream parser ----------------------------
    yield ok(
        "duplicate-keys",
        b'{"device_id": 99, "device_id": 1, "event_type": "battery_charge", "value": 5, '
        b'"timestamp": ' + str(NOW - 61).encode() + b"}",
    )
    yield invalid(
        "duplicate-keys-startup-then-telemetry",
        b'{"event_type": "device_startup", "serial": "SN-1", "event_type": "battery_charge"}',
        "missing_field",
    )
    # --- wrong types ----------------------------------------------------------------------------------
    for name, value in {"string": "1", "bool": True, "list": [1], "object": {"id": 1}}.items():
        yield invalid(f"device-id-{name}", ev(device_id=value), "wrong_type")
        yield invalid(f"value-{name}", ev(value=value), "wrong_type")
        yield invalid(f"timestamp-{name}", ev(timestamp=value), "wrong_type")
    for name, value in {"int": 5, "bool": True, "list": ["battery_charge"], "object": {}}.items():
        yield invalid(f"event-type-{name}", ev(event_type=value), "wrong_type")
    for name, value in {"int": 1, "string": "x", "null": None, "true": True, "float": 1.5}.items():
        yield invalid(f"top-level-{name}", value, "not_an_object")
    yield invalid("empty-array", b"[]", "empty_batch")
    yield Case("array-of-arrays", b"[[], [{}]]", 200, [("invalid", "not_an_object")] * 2)
    # --- missing and extra fields -----------------------------------------------------------------------
    yield invalid("empty-object", {}, "missing_field")
    for name in ("device_id", "event_type", "value", "timestamp"):
        event = ev()
        del event[name]
        yield invalid(f"missing-{name}", event, "missing_field")
        yield invalid(f"null-{name}", ev(**{name: None}), "missing_field")
    for name in ("serial", "provision_token", "timestamp"):
        event = startup(SECRET, "SN-MISSING")
        del event[name]
        yield invalid(f"startup-missing-{name}", event, "missing_field")
    yield ok("extra-fields", ev(value=11, firmware="x", __proto__={"admin": True}, constructor=1, extra=[1, 2]))
    yield ok("thousand-extra-fields", ev(value=12, **{f"k{i}": i for i in range(1000)}))
    # --- unknown event types ------------------------------------------------------------------------------
    for name, value in {
        "unknown": "warp_drive_mm",
        "empty": "",
        "upper-case": "PLATFORM_EXTENSION_MM",
        "trailing-space": "platform_extension_mm ",
        "homoglyph": "pl\u0430tform_extension_mm",
        "startup-lookalike": "Device_Startup",
        "sql-like-name": "platform_extension_mm' or '1'='1",
    }.items():
        yield invalid(f"event-type-{name}", ev(event_type=value), "unknown_event_type")
    # --- absurd timestamps ------------------------------------------------------------------------------
    for name, (value, reason) in {
        "zero": (0, "timestamp_too_old"),
        "negative": (-1, "timestamp_too_old"),
        "just-before-2000": (946_684_799.999, "timestamp_too_old"),
        "year-10000": (253_402_300_800, "timestamp_in_future"),
        "milliseconds": (NOW * 1000, "timestamp_in_future"),
        "beyond-skew": (NOW + 3600, "timestamp_in_future"),
        "iso-string": ("2024-01-01T00:00:00Z", "wrong_type"),
    }.items():
        yield invalid(f"timestamp-{name}", ev(timestamp=value), reason)
    # --- very long strings (1 MB) in every field ------------------------------------------------------
    long = "x" * MB
    yield invalid("long-device-id", ev(device_id=long), "wrong_type")
    yield invalid("long-event-type", ev(event_type=long), "unknown_event_type")
    yield invalid("long-value", ev(value=long), "wrong_type")
    yield invalid("long-timestamp", ev(timestamp=long), "wrong_type")
    yield ok("long-extra-field", ev(value=13, note=long))
    yield ok("long-key", ev(value=14, **{long: 1}))
    yield invalid("long-serial", st("SN-1", serial=long), "invalid_serial")
    yield single("long-token", startup(SECRET, "SN-LONG", provision_token=long), 401, "unauthorized", "invalid_token")
    yield invalid("long-firmware", startup(SECRET, "SN-LONGFW", firmware=long), "wrong_type")
    # --- SQL-looking strings in every field ------------------------------------------------------------
    for i, text in enumerate(SQL):
        yield invalid(f"sql-device-id-{i}", ev(device_id=text), "wrong_type")
        yield invalid(f"sql-event-type-{i}", ev(event_type=text), "unknown_event_type")
        yield invalid(f"sql-value-{i}", ev(value=text), "wrong_type")
        yield invalid(f"sql-timestamp-{i}", ev(timestamp=text), "wrong_type")
        yield invalid(f"sql-serial-{i}", st("SN-1", serial=text), "invalid_serial")
        yield invalid(f"sql-firmware-{i}", startup(SECRET, "SN-SQLFW", firmware=text), "wrong_type")
        yield single(
            f"sql-token-{i}", startup(SECRET, f"SN-SQL-{i}", provision_token=text), 401, "unauthorized", "invalid_token"
        )
        yield ok(f"sql-extra-{i}", ev(value=20 + i, **{text: text}))
    yield ok("sql-request-id", ev(value=30), headers={"content-type": JSON, "x-request-id": SQL[0]})
    # --- NUL characters and lone surrogates (JSON escapes; PostgreSQL text and jsonb refuse both) ------
    for name, text in {
        "nul": "a\u0000b",
        "lone-high-surrogate": "\ud800",
        "lone-low-surrogate": "\udfff",
        "reversed-pair": "\udfff\ud800",
    }.items():
        body = lambda **f: json.dumps(f).encode()  # noqa: E731 - escapes NUL and surrogates as \\uXXXX
        yield invalid(f"{name}-event-type", body(**ev(event_type=text)), "unknown_event_type")
        yield invalid(f"{name}-device-id", body(**ev(device_id=text)), "wrong_type")
        yield invalid(f"{name}-value", body(**ev(value=text)), "wrong_type")
        yield invalid(f"{name}-serial", body(**st("SN-1", serial=text)), "invalid_serial")
        yield invalid(f"{name}-firmware", body(**startup(SECRET, "SN-NULFW", firmware=text)), "wrong_type")
        yield single(
            f"{name}-token",
            body(**startup(SECRET, f"SN-NUL-{len(name)}", provision_token=text)),
            401,
            "unauthorized",
            "invalid_token",
        )
        yield ok(f"{name}-extra-field", body(**ev(value=40 + len(name), note=text)))
        yield ok(f"{name}-key", body(**ev(value=60 + len(name), **{text: 1})))
        array = b"[" + body(**ev(value=80 + len(name), note=text)) + b", " + body(event_type=text) + b"]"
        yield Case(f"{name}-in-batch", array, 200, [("ok", None), ("invalid", "missing_field")], sent=json.loads(array))
        lines = body(**ev(value=100 + len(name), note=text)) + b"\n" + body(event_type=text) + b"\n"
        yield Case(
            f"{name}-in-ndjson",
            lines,
            200,
            [("ok", None), ("invalid", "missing_field")],
            headers={"content-type": NDJSON},
            sent=lines.split(b"\n")[:2],
        )
    # --- junk mixed with good items ------------------------------------------------------------------------
    good = [ev(device_id=2, value=v) for v in (1, 2)]
    mixed = [
        good[0],
        {},
        1,
        "x",
        None,
        [],
        True,
        ev(value="high"),
        ev(event_type="nope"),
        startup(SECRET, "SN-MIX"),
        startup("wrong", "SN-MIX-2"),
        ev(device_id=2**40),
        good[1],
        good[0],
    ]
    yield Case(
        "batch-junk-mixed-with-good",
        dumps(mixed),
        200,
        [
            ("ok", None),
            ("invalid", "missing_field"),
            ("invalid", "not_an_object"),
            ("invalid", "not_an_object"),
            ("invalid", "not_an_object"),
            ("invalid", "not_an_object"),
            ("invalid", "not_an_object"),
            ("invalid", "wrong_type"),
            ("invalid", "unknown_event_type"),
            ("provisioned", None),
            ("unauthorized", "invalid_token"),
            ("invalid", "unknown_device"),
            ("ok", None),
            ("duplicate", None),
        ],
        sent=mixed,
    )
    nd = [
        dumps(ev(device_id=3, value=1)),
        b"not json",
        b"{}",
        b"[1]",
        b"\xff\xfe",
        b"NaN",
        b"  ",
        dumps(ev(device_id=3, value=2)),
    ]
    yield Case(
        "ndjson-junk-mixed-with-good",
        b"\n".join(nd) + b"\n",
        200,
        [
            ("ok", None),
            ("invalid", "invalid_json"),
            ("invalid", "missing_field"),
            ("invalid", "not_an_object"),
            ("invalid", "invalid_json"),
            ("invalid", "invalid_json"),
            ("ok", None),
        ],
        headers={"content-type": NDJSON},
        sent=[line for line in nd if line.strip()],
    )
    yield Case(
        "ndjson-crlf",
        dumps(ev(device_id=4, value=1)) + b"\r\n" + dumps(ev(device_id=4, value=2)) + b"\r\n",
        200,
        [("ok", None), ("ok", None)],
        headers={"content-type": NDJSON},
    )
    # --- limits -------------------------------------------------------------------------------------------
    yield refused("batch-over-item-limit", dumps([{}] * 10_001), 413, "too_many_items", {"content-type": JSON})
    yield refused("ndjson-over-item-limit", b"{}\n" * 10_001, 413, "too_many_items", {"content-type": NDJSON})
    yield refused("body-over-size-limit", b"[" + b" " * (4 * MB) + b"]", 413, "body_too_large", {})
    # --- gzip ---------------------------------------------------------------------------------------------
    gz = {"content-type": NDJSON, "content-encoding": "gzip"}
    yield refused("gzip-bomb", gzip.compress(b" " * (17 * MB), 9), 413, "inflated_too_large", gz)
    yield refused("gzip-bomb-ndjson", gzip.compress(b"{}\n" * (6 * MB), 9), 413, "inflated_too_large", gz)
    yield refused("gzip-corrupt", b"\x1f\x8b\x08\x00garbage-not-deflate", 400, "invalid_gzip", gz)
    yield refused("gzip-not-gzip", dumps(ev()), 400, "invalid_gzip", gz)
    two = dumps(ev(device_id=5, value=1)) + b"\n" + dumps(ev(device_id=5, value=2)) + b"\n"
    yield refused("gzip-truncated", gzip.compress(two)[:-12], 400, "invalid_gzip", gz)
    yield refused("gzip-trailing-garbage", gzip.compress(two) + b"garbage", 400, "invalid_gzip", gz)
    members = gzip.compress(two) + gzip.compress(dumps(ev(device_id=5, value=3)) + b"\n")
    yield Case(
        "gzip-multi-member",
        members,
        200,
        [("ok", None)] * 3,
        headers=gz,
        sent=[line for line in gzip.decompress(members).split(b"\n") if line],
    )
    empty_members = gzip.compress(b"") * (MAX_GZIP_MEMBERS + 1)
    yield refused("gzip-too-many-members", empty_members, 413, "too_many_gzip_members", gz)
    yield refused("gzip-4mb-of-empty-members", gzip.compress(b"") * 200_000, 413, "too_many_gzip_members", gz)
    yield Case(
        "gzip-upper-case",
        gzip.compress(dumps(ev(device_id=6))),
        200,
        ("ok", None),
        headers={"content-type": JSON, "content-encoding": "GZIP"},
    )
    yield invalid(
        "gzip-double",
        gzip.compress(gzip.compress(dumps(ev()))),
        "invalid_json",
        headers={"content-type": JSON, "content-encoding": "gzip"},
    )
    yield Case("gzip-empty", b"", 422, ("invalid", "empty_body"), headers=gz)
    for encoding in ("br", "deflate", "compress", "zstd", "gzip, gzip", "x" * 1000):
        yield refused(
            f"encoding-{encoding[:12]}",
            b"xx",
            415,
            "unsupported_encoding",
            {"content-type": JSON, "content-encoding": encoding},
        )
    yield ok("encoding-identity", ev(device_id=7), headers={"content-type": JSON, "content-encoding": "identity"})
    # --- content types ------------------------------------------------------------------------------------
    yield ok("content-type-text-plain", ev(device_id=8), headers={"content-type": "text/plain"})
    yield ok("content-type-missing", ev(device_id=9), headers={})
    yield ok("content-type-charset", ev(device_id=10), headers={"content-type": "application/json; charset=utf-16"})
    yield ok("content-type-huge", ev(device_id=11), headers={"content-type": "application/json; x=" + "y" * 10_000})
    yield invalid(
        "content-type-xml",
        b"<event><device_id>1</device_id></event>",
        "invalid_json",
        headers={"content-type": "application/xml"},
    )
    yield invalid(
        "content-type-form",
        b"device_id=1&value=2",
        "invalid_json",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    yield invalid(
        "content-type-multipart",
        b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--b--\r\n",
        "invalid_json",
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    yield invalid("json-type-with-ndjson-body", dumps(ev()) + b"\n" + dumps(ev()), "invalid_json")
    pretty = json.dumps(ev(device_id=12), indent=2).encode()
    yield Case(
        "ndjson-type-with-pretty-json",
        pretty,
        200,
        [("invalid", "invalid_json")] * len([ln for ln in pretty.split(b"\n") if ln.strip()]),
        headers={"content-type": NDJSON},
    )
    yield invalid("ndjson-empty", b"\n\n", "empty_body", headers={"content-type": NDJSON})
    # --- device_startup abuse -------------------------------------------------------------------------------
    yield single(
        "startup-upper-case-token",
        startup(SECRET, "SN-UPPER", provision_token=token(SECRET, "SN-UPPER").upper()),
        200,
        "provisioned",
        None,
    )
    yield single(
        "startup-token-for-other-serial",
        startup(SECRET, "SN-A", provision_token=token(SECRET, "SN-B")),
        401,
        "unauthorized",
        "invalid_token",
    )
    yield single(
        "startup-token-not-hex",
        startup(SECRET, "SN-HEX", provision_token="g" * 64),
        401,
        "unauthorized",
        "invalid_token",
    )
    yield single(
        "startup-token-number", startup(SECRET, "SN-NUM", provision_token=12345), 401, "unauthorized", "invalid_token"
    )
    yield invalid(
        "startup-provisioned-device-id", startup(SECRET, "SN-PROV", device_id=2**31), "device_id_out_of_range"
    )
    yield invalid("startup-device-id-string", startup(SECRET, "SN-STR", device_id="5"), "wrong_type")
    yield invalid("startup-serial-with-space", startup(SECRET, "SN 1"), "invalid_serial")
    yield invalid("startup-serial-65-chars", startup(SECRET, "S" * 65), "invalid_serial")
    yield invalid("startup-serial-number", st("SN-1", serial=12345), "invalid_serial")


def _with(**literals: bytes) -> bytes:
    """A telemetry event whose named fields hold raw JSON literals (which json.dumps cannot write)."""
    event = ev(**{name: f"@@{name}@@" for name in literals})
    text = json.dumps(event).encode()
    for name, literal in literals.items():
        text = text.replace(f'"@@{name}@@"'.encode(), literal)
    return text


CASES = list(cases())


@pytest.fixture(scope="module", params=["in-process", pytest.param("served", marks=pytest.mark.slow)])
def corpus_db(
    request: pytest.FixtureRequest, pg_server: DatabaseTarget, pg_template: DatabaseTarget
) -> Iterator[tuple[str, DatabaseTarget]]:
    """The corpus runs twice, each time on a database of its own: in-process (the application
    alone), and over a real socket against `iot-platform serve` (the HTTP server and its limits)."""
    target = create_fresh_database(pg_server)
    yield request.param, target
    drop_database(pg_server, target.parts["dbname"])


@pytest.fixture(scope="module")
def hostile_client(corpus_db: tuple[str, DatabaseTarget]) -> Iterator[httpx.Client]:
    mode, target = corpus_db
    if mode == "in-process":
        with TestClient(create_app(make_settings(target))) as client:
            yield client
    else:
        with running_api(target, SECRET) as base, httpx.Client(base_url=base, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def ledger(corpus_db: tuple[str, DatabaseTarget]) -> Iterator[psycopg.Connection]:
    with psycopg.connect(corpus_db[1].url, autocommit=True) as conn:
        yield conn


def _raw_count(conn: psycopg.Connection) -> int:
    row = conn.execute("select count(*) from ingest.raw_record").fetchone()
    assert row is not None
    return row[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_gets_documented_answer(
    case: Case, hostile_client: httpx.Client, ledger: psycopg.Connection
) -> None:
    before = _raw_count(ledger)
    response = hostile_client.post("/ingest", content=case.body, headers=case.headers)
    body = response.json()
    check_answer_shape(response.status_code, body)
    assert response.status_code == case.status, body if len(response.text) < 2000 else response.text[:2000]
    assert response.headers["x-request-id"]
    if not case.stored:
        _, reason = case.expect  # type: ignore[misc]
        assert (body["reason"], body["stored"], body["raw_id"]) == (reason, False, None)
        assert _raw_count(ledger) == before, "a refused body left rows in the ledger"
        return
    results = body if isinstance(body, list) else [body]
    expected = case.expect if isinstance(case.expect, list) else [case.expect]
    assert [(r["status"], r.get("reason")) for r in results] == expected
    assert all(r.get("detail") for r in results if r.get("reason")), "a failure without a human detail"
    check_stored(ledger, results, case.sent)
    assert _raw_count(ledger) == before + len(results)


def test_hostile_corpus_left_the_schema_intact(hostile_client: httpx.Client, ledger: psycopg.Connection) -> None:
    tables = ledger.execute("select count(*) from information_schema.tables where table_schema = 'ingest'").fetchone()
    assert tables is not None and tables[0] >= 7
    response = hostile_client.post("/ingest", json=telemetry(device_id=1, value=1))
    assert response.status_code == 200
    print(f"\nhostile-input corpus: {len(CASES)} cases")
