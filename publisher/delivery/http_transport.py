"""The transport over `POST /ingest`: body encoding, status codes, `Retry-After`."""

from __future__ import annotations

import gzip
import json
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from publisher.delivery.config import HttpOptions
from publisher.delivery.items import Line, Outcome, Result
from publisher.delivery.transport import Rejected, Retryable, TooLarge

NDJSON = "application/x-ndjson"
JSON = "application/json"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_json(raw: bytes) -> bool:
    """Strict JSON (no NaN/Infinity, UTF-8), as the API parses it."""
    try:
        json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    return True


def encode_body(lines: list[Line], fmt: str = "ndjson", compress: bool = False) -> tuple[bytes, dict[str, str]]:
    """The request body and headers for one batch.

    `json` sends an array, but an array cannot carry a line that is not JSON, so such a batch goes as
    NDJSON: the API keeps every line in its ledger either way.
    """
    if fmt == "json" and all(is_json(line.raw) for line in lines):
        body = b"[" + b",".join(line.raw for line in lines) + b"]"
        headers = {"Content-Type": JSON}
    else:
        body = b"".join(line.raw + b"\n" for line in lines)
        headers = {"Content-Type": NDJSON}
    if compress:
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def is_retryable(status_code: int) -> bool:
    return status_code in (408, 425, 429) or 500 <= status_code <= 599


def results_from_response(response: httpx.Response, expected: int) -> list[Result] | None:
    """Per-item results in input order, or None when the answer is not one result per line."""
    try:
        body = response.json()
    except ValueError:
        return None
    # Buffered mode: 202 with a receipt for the whole batch, every line accepted (durable in the stream).
    if response.status_code == 202 and isinstance(body, dict) and body.get("items") == expected:
        receipt = body.get("receipt")
        return [{"status": "accepted", "receipt": receipt, "batch_index": i} for i in range(expected)]
    if isinstance(body, dict) and expected == 1:
        body = [body]
    if not isinstance(body, list) or len(body) != expected:
        return None
    if not all(isinstance(item, dict) and isinstance(item.get("status"), str) for item in body):
        return None
    return body


def _snippet(response: httpx.Response) -> str:
    return response.text.strip().replace("\n", " ")[:200]


class HttpTransport:
    """One keep-alive `httpx.Client` (thread-safe) with a connection per batch in flight."""

    def __init__(self, options: HttpOptions, timeout: float, connections: int = 1) -> None:
        self.options = options
        self.client = httpx.Client(
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    def send(self, lines: list[Line]) -> list[Outcome]:
        body, headers = encode_body(lines, self.options.format, self.options.gzip)
        try:
            response = self.client.post(self.options.url, content=body, headers=headers)
        except httpx.RequestError as exc:
            name = type(exc).__name__
            raise Retryable(name, f"{name}: {exc}".rstrip(": ")) from exc
        status = response.status_code
        if status == 413:
            raise TooLarge("too_large", _snippet(response))
        # 401 and 422 carry per-item results too (a single item that is unauthorized or invalid).
        if 200 <= status < 300 or status in (401, 422):
            results = results_from_response(response, len(lines))
            if results is not None:
                return list(results)
            # The answer does not account for every line: sending again is safe (replays add no
            # facts), giving up could lose lines.
            raise Retryable(f"http_{status}", f"HTTP {status} with a body that is not one result per line")
        if is_retryable(status):
            raise Retryable(f"http_{status}", f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
        raise Rejected(f"http_{status}", f"HTTP {status} {_snippet(response)}")

    def close(self) -> None:
        self.client.close()
