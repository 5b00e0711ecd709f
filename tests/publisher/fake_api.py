"""A stand-in for the ingest API on 127.0.0.1: per-item results, and failures on demand.

It answers like `POST /ingest` does for batches (one result per NDJSON line or array element, in
order) and can be scripted to answer 503 + Retry-After, 413, any status, or to drop the connection.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TELEMETRY_FIELDS = ("device_id", "event_type", "value", "timestamp")


@dataclass
class Request:
    at: float
    content_type: str
    content_encoding: str
    items: list[bytes]  # each item's raw JSON text (array elements re-serialised) or raw line
    answered: int


@dataclass
class FakeApi:
    url: str = ""
    # Consumed one per request: "ok", "drop", ("status", code, retry_after or None), "bad_body".
    script: list[Any] = field(default_factory=list)
    max_items: int | None = None  # more items than this in one request: 413
    delay: float = 0.0  # seconds before answering
    requests: list[Request] = field(default_factory=list)
    stored: list[bytes] = field(default_factory=list)  # items in the "ledger", in arrival order
    seen: set[bytes] = field(default_factory=set)
    provisioned: dict[str, int] = field(default_factory=dict)  # serial -> assigned id, as the API's device table
    answered_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_action(self) -> Any:
        with self.lock:
            self.answered_requests += 1
            return self.script.pop(0) if self.script else "ok"

    def script_used(self) -> int:
        """Requests answered so far (stored or not)."""
        with self.lock:
            return self.answered_requests

    def result_for(self, item: bytes, raw_id: int) -> dict[str, Any]:
        try:
            event = json.loads(item)
        except ValueError:
            return {
                "raw_id": raw_id,
                "processed_id": None,
                "status": "invalid",
                "reason": "invalid_json",
                "detail": "not valid JSON",
            }
        if not isinstance(event, dict):
            return {
                "raw_id": raw_id,
                "processed_id": None,
                "status": "invalid",
                "reason": "not_an_object",
                "detail": "each event must be a JSON object",
            }
        if event.get("event_type") == "device_startup":
            # A legacy device keeps its id; a brand-new one gets the next id above the legacy range.
            device_id = event.get("device_id") or self.provisioned.setdefault(
                event["serial"], 2**31 + len(self.provisioned)
            )
            return {"raw_id": raw_id, "processed_id": None, "status": "provisioned", "device_id": device_id}
        missing = [name for name in TELEMETRY_FIELDS if event.get(name) is None]
        if missing:
            return {
                "raw_id": raw_id,
                "processed_id": None,
                "status": "invalid",
                "reason": "missing_field",
                "detail": f"missing {', '.join(missing)}",
            }
        if not isinstance(event["value"], int | float):
            return {
                "raw_id": raw_id,
                "processed_id": None,
                "status": "invalid",
                "reason": "wrong_type",
                "detail": "value must be a number",
            }
        status = "duplicate" if item in self.seen else "ok"
        self.seen.add(item)
        return {"raw_id": raw_id, "processed_id": raw_id, "status": status}


def _split(body: bytes, content_type: str) -> list[bytes]:
    if content_type.startswith("application/x-ndjson"):
        return [line for line in body.split(b"\n") if line.strip()]
    parsed = json.loads(body)
    assert isinstance(parsed, list), "the publisher always sends batches"
    return [json.dumps(value).encode() for value in parsed]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API
    api: FakeApi

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _answer(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        api = self.api
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        action = api.next_action()
        if api.delay:
            time.sleep(api.delay)
        if action == "drop":
            self.close_connection = True  # no answer at all: the client sees the connection go
            return
        if isinstance(action, tuple) and action[0] == "status":
            _, code, retry_after = action
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            self._answer(code, {"detail": f"scripted {code}"}, headers)
            return
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        content_type = self.headers.get("Content-Type", "")
        items = _split(body, content_type)
        if api.max_items is not None and len(items) > api.max_items:
            self._answer(413, {"reason": "too_many_items", "detail": "too many items; nothing stored"})
            return
        with api.lock:
            results = []
            for item in items:
                api.stored.append(item)
                results.append(api.result_for(item, len(api.stored)))
            api.requests.append(Request(time.monotonic(), content_type, encoding, items, len(results)))
        if action == "bad_body":
            results = results[:-1]
        self._answer(200, results)


@contextmanager
def running_api(**options: Any) -> Iterator[FakeApi]:
    api = FakeApi(**options)
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}/ingest"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
