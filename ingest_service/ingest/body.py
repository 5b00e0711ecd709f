"""Parse: a body (bytes) becomes ledger items, one per JSON object, array element or NDJSON line.

The first stage of the write path, the same for every door (`parse`). Nothing here rejects an item:
a body that does not parse still becomes an item (kept as text or bytes for the ledger) that
carries the reason it cannot be processed. Only a body over a limit, in an unsupported encoding or
with a corrupt gzip stream is refused as a whole (`BodyRejected`), and then nothing is stored.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/ndjson", "application/json-seq")
SUPPORTED_ENCODINGS = ("identity", "gzip", "x-gzip")
UNPARSED = object()
# orjson reads integers beyond 64 bits as (inexact) floats: such bodies go to the standard library.
# A body holds such a number only if it has a run of 19+ digits; found with translate + find (C speed,
# about 20x faster than the regular expression \d{19} on a batch of 1,000 events).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def _has_long_number(data: bytes) -> bool:
    return _LONG_DIGIT_RUN in data.translate(_DIGITS_AS_ZERO)


class BodyRejected(Exception):
    """The body is refused as a whole and nothing is stored: the client keeps it, and splits or fixes
    it before it retries. `reason` is machine-readable; each door says it its own way (HTTP: a status
    per reason, `ingest_service.api.answers`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class BodyItem:
    """One ledger row to be: exactly one of payload (JSON text for jsonb), text or raw bytes."""

    payload: str | None
    body_text: str | None
    body_bytes: bytes | None
    parsed: Any  # the decoded JSON value, or UNPARSED
    parse_error: tuple[str, str] | None = None  # (reason, detail) when it is not usable JSON

    def as_text(self) -> BodyItem:
        """The same content as text (or bytes) only: the last resort for an item whose JSON the
        ledger refused, so that it is still kept."""
        text = self.payload if self.payload is not None else self.body_text
        return BodyItem(None, text, self.body_bytes, UNPARSED)


@dataclass(slots=True, frozen=True)
class Parsed:
    """A parsed body: its items in order, and whether it was a batch (an array or NDJSON, answered
    with a list of results) rather than one event (answered with one result)."""

    items: list[BodyItem]
    is_batch: bool


def parse(
    body: bytes, content_type: str | None, content_encoding: str | None, *, max_inflated_bytes: int, max_items: int
) -> Parsed:
    """Inflate and split a body into items. Raises BodyRejected (nothing is stored) when the body is
    over a limit, in an unsupported encoding, or not valid gzip."""
    inflated = inflate(body, content_encoding, max_inflated_bytes)
    is_batch, items = split_items(inflated, content_type, max_items)
    return Parsed(items, is_batch)


# A gzip body of more members is refused (413 too_many_gzip_members). One compressor writes one
# member; concatenated files or per-line members stay far below this.
MAX_GZIP_MEMBERS = 1000
_GZIP_FIRST_SLICE, _GZIP_MAX_SLICE = 256, 1 << 20


def inflate(body: bytes, encoding: str | None, max_inflated: int) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in SUPPORTED_ENCODINGS:
        raise BodyRejected("unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip")
    # A gzip body may be several members back to back (RFC 1952): inflate them all. Each member is
    # fed in growing slices (zlib copies what is left of a slice past a member's end), so the work is
    # linear in the body, and the members are capped: a body of empty members costs no more than
    # MAX_GZIP_MEMBERS of them.
    view, chunks, size, pos, members = memoryview(body), [], 0, 0, 0
    try:
        while pos < len(body):
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise BodyRejected("too_many_gzip_members", f"the gzip body has more than {MAX_GZIP_MEMBERS} members")
            inflater, step = zlib.decompressobj(16 + zlib.MAX_WBITS), _GZIP_FIRST_SLICE
            while not inflater.eof:
                if pos >= len(body):
                    raise BodyRejected("invalid_gzip", "body is not valid gzip: the stream is truncated")
                piece = view[pos : pos + step]
                chunks.append(inflater.decompress(piece, max_inflated + 1 - size))
                size += len(chunks[-1])
                if size > max_inflated or inflater.unconsumed_tail:
                    raise BodyRejected("inflated_too_large", f"gzip body inflates beyond the {max_inflated}-byte limit")
                pos += len(piece) - len(inflater.unused_data)
                step = min(2 * step, _GZIP_MAX_SLICE)
    except zlib.error as exc:
        raise BodyRejected("invalid_gzip", f"body is not valid gzip: {exc}") from exc
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(data: bytes) -> Any:
    """orjson first; the standard library for what orjson refuses or reads inexactly but JSON allows
    (integers beyond 64 bits, numbers beyond the float range)."""
    if not _has_long_number(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError: caller reports invalid_json
    return json.loads(text, parse_constant=_reject_constant)


def _text_or_bytes(data: bytes) -> tuple[str | None, bytes | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, data
    if "\x00" in text:  # PostgreSQL text cannot hold NUL
        return None, data
    return text, None


def _json_text(value: Any) -> str | None:
    """Canonical JSON for the jsonb column, or None when jsonb cannot hold it exactly."""
    try:
        dumped = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return None  # e.g. integers beyond 64 bits: kept as the original text instead
    if b"\\u0000" in dumped:  # jsonb rejects NUL in strings
        return None
    if b"null" in dumped and _has_non_finite(value):  # orjson writes 1e400 (inf) as null
        return None
    return dumped.decode()


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return isinstance(value, list) and any(_has_non_finite(v) for v in value)


def _item_from_bytes(data: bytes) -> BodyItem:
    if not data.strip():
        text, raw = _text_or_bytes(data)
        return BodyItem(None, text, raw, UNPARSED, ("empty_body", "the body (or line) is empty"))
    try:
        parsed = _loads(data)
    except (ValueError, RecursionError) as exc:
        text, raw = _text_or_bytes(data)
        detail = f"not valid JSON: {str(exc)[:200]}"
        return BodyItem(None, text, raw, UNPARSED, ("invalid_json", detail))
    payload = _json_text(parsed)
    if payload is None:
        text, raw = _text_or_bytes(data)
        return BodyItem(None, text, raw, parsed)
    return BodyItem(payload, None, None, parsed)


def _item_from_value(value: Any) -> BodyItem:
    payload = _json_text(value)
    if payload is not None:
        return BodyItem(payload, None, None, value)
    return BodyItem(None, json.dumps(value, ensure_ascii=True, default=str), None, value)


def split_items(body: bytes, content_type: str | None, max_items: int) -> tuple[bool, list[BodyItem]]:
    """Return (is_batch, items). NDJSON and JSON arrays are batches; anything else is one item."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type in NDJSON_TYPES:
        lines = [line for line in body.split(b"\n") if line.strip()]
        if len(lines) > max_items:
            raise BodyRejected("too_many_items", f"{len(lines)} items exceed the {max_items}-item limit")
        if not lines:
            return False, [_item_from_bytes(body)]
        return True, [_item_from_bytes(line) for line in lines]

    item = _item_from_bytes(body)
    if isinstance(item.parsed, list):
        if len(item.parsed) > max_items:
            raise BodyRejected("too_many_items", f"{len(item.parsed)} items exceed the {max_items}-item limit")
        if not item.parsed:
            item.parse_error = ("empty_batch", "the JSON array holds no events")
            return False, [item]
        try:
            return True, [_item_from_value(value) for value in item.parsed]
        except RecursionError:  # an element nested too deeply to write out on its own: keep the body whole
            text, raw = _text_or_bytes(body)
            detail = "an array element is nested too deeply to store on its own; the body is kept whole"
            return False, [BodyItem(None, text, raw, UNPARSED, ("invalid_json", detail))]
    return False, [item]


def ledger_item(payload: str | None, body_text: str | None, body_bytes: bytes | None) -> BodyItem:
    """A ledger row as the item it was (a replay decides it again): its JSON (the jsonb column's
    text) read back, or its text or bytes parsed as when they arrived."""
    if payload is not None:
        return BodyItem(payload, None, None, _loads(payload.encode()))
    data = body_text.encode() if body_text is not None else body_bytes
    if data is None:
        raise ValueError("a ledger row has a payload, a text or bytes")
    return _item_from_bytes(data)
