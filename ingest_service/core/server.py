"""The HTTP server the API (and the benchmark's no-op ceiling) runs on: uvicorn with httptools.

llhttp (httptools) is the strict parser: it refuses Content-Length with Transfer-Encoding, duplicate
Content-Length, a final coding other than chunked (400) and keeps pipelined requests in order.
uvicorn has no header-read or body-read timeout, no header size limit and no connection cap, and
does not time out a connection that never sends a byte; `EdgeProtocol` adds those limits to its
httptools protocol (uvicorn takes a protocol class as `http=`), so one client can neither hold
sockets open forever nor make the parser buffer without bound:

- idle (connected, or answered, and no byte of a next request): closed after
  `KEEPALIVE_TIMEOUT_SECONDS`;
- reading the request line and headers: 408 after `HEADER_READ_TIMEOUT_SECONDS`, 431 beyond
  `MAX_HEADER_BYTES`;
- reading the body (while the app reads it): 408 after `BODY_READ_TIMEOUT_SECONDS`;
- at `MAX_CONNECTIONS` open connections (per worker), a new connection closes the one waiting
  longest with nothing in the app (idle, or still sending its head); when every connection has a
  request in the app, the new one gets 503 and is closed.

A transfer coding other than chunked (`Transfer-Encoding: gzip, chunked`) is answered 501
(RFC 9112 section 6.1): llhttp frames the body by its final chunked coding and would hand the app
bytes that are still gzip.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ingest_service.core.config import Settings
from ingest_service.core.observability import METRICS

log = logging.getLogger(__name__)

IDLE, HEAD, BODY, APP = range(4)  # what a connection is doing; only APP has no deadline
# File descriptors a worker keeps for everything but client connections: pools, logs, files.
FDS_RESERVED_PER_WORKER = 256
# Highest soft RLIMIT_NOFILE asked for when the hard limit is unlimited.
NOFILE_CEILING = 1 << 20

CLOSED = Counter(
    "http_connections_closed",
    "Connections the server closed on a limit, by reason",
    ["reason"],
    registry=METRICS.registry,
)


@dataclass(frozen=True)
class EdgeLimits:
    keep_alive_timeout: float
    header_read_timeout: float
    body_read_timeout: float
    max_header_bytes: int
    max_connections: int  # per worker process

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            keep_alive_timeout=settings.keepalive_timeout_seconds,
            header_read_timeout=settings.header_read_timeout_seconds,
            body_read_timeout=settings.body_read_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
        )


def _answer(status: int, phrase: str, reason: str, detail: str, extra: bytes = b"") -> bytes:
    """A complete response written by the server itself (no app involved), then the connection closes."""
    body = orjson.dumps({"status": "refused" if status < 500 else "error", "reason": reason, "detail": detail})
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n"
    ).encode()
    return head + extra + b"\r\n" + body


class _RateLimitedWarning:
    """One log line per reason and interval, with the count since the last one: a flood of refused
    connections is visible in the log without becoming a flood of log lines."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.counts: dict[str, int] = {}
        self.logged_at: dict[str, float] = {}

    def __call__(self, reason: str, message: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self.logged_at.get(reason, -self.interval) >= self.interval:
            count, self.counts[reason], self.logged_at[reason] = self.counts[reason], 0, now
            log.warning(message, extra={"fields": {"reason": reason, "connections": count}})


_warn = _RateLimitedWarning()


def _closed(reason: str, message: str | None = None) -> None:
    CLOSED.labels(reason).inc()
    if message is not None:
        _warn(reason, message)


def _refusal_app(status: int, reason: str, detail: str) -> Any:
    """A tiny ASGI app that answers a request the server refuses after reading its head; uvicorn
    runs it in place of the API (its own way, as for limit_concurrency), reads and drops the rest of
    the body, and closes the connection."""
    body = orjson.dumps({"status": "refused", "reason": reason, "detail": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


TRANSFER_CODING_NOT_IMPLEMENTED = _refusal_app(
    501,
    "unsupported_transfer_coding",
    "only the chunked transfer coding is supported; send gzip as Content-Encoding",
)


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for every phase in which the server waits on the
    client, a header size limit and a connection cap (the module docstring has the table).

    One timer per connection at a time: a phase change only moves `_deadline`; the timer, when it
    fires early, re-arms itself for the deadline. A busy keep-alive connection costs no timer per
    request.
    """

    # Connections with nothing in the app (idle, or still sending a request head), longest waiting
    # first: the ones closed to make room at the cap. Per process, as uvicorn's `connections` is.
    waiting: dict[EdgeProtocol, None] = {}

    def __init__(self, *args: Any, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._phase = IDLE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._head_bytes = 0
        self._heads = 0  # request heads read so far

    # --- deadlines ---------------------------------------------------------------------------
    def _expect(self, phase: int, timeout: float) -> None:
        self._phase = phase
        self._deadline = deadline = self.loop.time() + timeout
        if self._timer is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self._phase == APP or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._phase == BODY and self.flow.read_paused:
            # Not the client's delay: the app has not taken what came so far (or a pipelined request
            # waits its turn). The body gets its full time once reading resumes.
            self._deadline = now + self.limits.body_read_timeout
        if now < self._deadline:
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._on_deadline)
            return
        if self._phase == IDLE:
            _closed("idle_timeout")
            self.transport.close()
        elif self._phase == HEAD:
            _closed("header_timeout")
            self._refuse(
                _answer(
                    408,
                    "Request Timeout",
                    "header_timeout",
                    f"the request line and headers did not arrive within {self.limits.header_read_timeout:g} s",
                )
            )
        else:
            _closed("body_timeout")
            self._refuse(
                _answer(
                    408,
                    "Request Timeout",
                    "body_timeout",
                    f"the request body did not arrive within {self.limits.body_read_timeout:g} s",
                )
            )

    def _refuse(self, response: bytes) -> None:
        """Answer from the server and close. While a body is read, the request is the app's: the
        answer is written only if the app has not begun its own (the app then sees a disconnect and
        its answer is dropped). While a head is read, only once the previous answer is complete."""
        cycle = self.cycle
        if self._phase == BODY and cycle is not None:
            if not cycle.response_started:
                cycle.disconnected = True
                cycle.message_event.set()
                self.transport.write(response)
        elif cycle is None or cycle.response_complete:
            self.transport.write(response)
        self.transport.close()

    # --- the connection cap ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect(IDLE, self.limits.keep_alive_timeout)
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            _closed("over_capacity", "connection refused: the server is at MAX_CONNECTIONS")
            self._refuse(_OVER_CAPACITY)
            return
        self.waiting[self] = None

    def _make_room(self) -> bool:
        for other in self.waiting:
            if other.transport.is_closing():  # closed on a deadline, leaving at its connection_lost
                continue
            if other._phase in (IDLE, HEAD) and (other.cycle is None or other.cycle.response_complete):
                _closed("evicted", "closed the longest-waiting connection: the server is at MAX_CONNECTIONS")
                self.waiting.pop(other)
                if other._phase == IDLE:
                    other.transport.close()
                else:
                    other._refuse(_OVER_CAPACITY)
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    # --- the request head --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        # A chunk counts against MAX_HEADER_BYTES when it holds only the head being read (and the
        # blank lines before it). A chunk that began inside a body, or in which another head ended
        # (pipelining), is not counted: its share of this head is unknown, so at most one chunk more
        # is read before the limit applies.
        counts = self._phase <= HEAD
        heads = self._heads
        super().data_received(data)
        if counts and heads == self._heads and self._phase <= HEAD and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                _closed("headers_too_large")
                self._refuse(_headers_too_large(self.limits.max_header_bytes))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._expect(HEAD, self.limits.header_read_timeout)

    def on_headers_complete(self) -> None:
        self._heads += 1
        self.waiting.pop(self, None)
        self._expect(BODY, self.limits.body_read_timeout)
        refusal = self._refusal()
        if refusal is None:
            super().on_headers_complete()
            return
        app, self.app = self.app, refusal
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def _refusal(self) -> Any:
        """The app that answers this request instead of the API, if its head is refused: too large
        (a head that arrived in one chunk is only measured here), or a transfer coding besides
        chunked."""
        size = len(self.url)
        only_chunked = True
        for name, value in self.headers:
            size += len(name) + len(value) + 4
            if name == b"transfer-encoding":
                only_chunked = only_chunked and all(c.strip().lower() == b"chunked" for c in value.split(b","))
        if size > self.limits.max_header_bytes:
            _closed("headers_too_large")
            return _headers_too_large_app(self.limits.max_header_bytes)
        if not only_chunked:
            return TRANSFER_CODING_NOT_IMPLEMENTED
        return None

    def on_message_complete(self) -> None:
        self._phase = APP
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # Idle again only when no further request has begun on this connection (pipelining).
        idle = self._phase == APP and not self.pipeline
        super().on_response_complete()
        if idle and not self.transport.is_closing():
            self._expect(IDLE, self.limits.keep_alive_timeout)
            self.waiting[self] = None


_OVER_CAPACITY = _answer(
    503,
    "Service Unavailable",
    "too_many_connections",
    "the server is at its connection limit; retry later",
    b"retry-after: 1\r\n",
)


def _headers_too_large_detail(limit: int) -> str:
    return f"the request line and headers exceed the {limit}-byte limit"


@functools.cache
def _headers_too_large(limit: int) -> bytes:
    return _answer(431, "Request Header Fields Too Large", "headers_too_large", _headers_too_large_detail(limit))


@functools.cache
def _headers_too_large_app(limit: int) -> Any:
    return _refusal_app(431, "headers_too_large", _headers_too_large_detail(limit))


def raise_nofile_limit() -> int:
    """Raise this process's soft file-descriptor limit to its hard limit (workers inherit it); returns
    the soft limit now in force. Without this, a few thousand sockets exhaust a default 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise RLIMIT_NOFILE", extra={"fields": {"soft": soft, "hard": hard, "error": str(exc)}})
        return soft
    return wanted


def prepare_server(settings: Settings, workers: int) -> dict[str, Any]:
    """Raise the file-descriptor limit, and return uvicorn.run's keyword arguments for the HTTP edge:
    the protocol with its limits (the cap fitted to the descriptors), keep-alive, proxy headers.
    `iot-platform serve` and the benchmark's no-op ceiling both start this way."""
    nofile = raise_nofile_limit()
    limits = EdgeLimits.from_settings(settings)
    fitting = max(1, nofile // max(1, workers) - FDS_RESERVED_PER_WORKER)
    if limits.max_connections > fitting:
        log.warning(
            "MAX_CONNECTIONS lowered to fit the file-descriptor limit",
            extra={"fields": {"configured": limits.max_connections, "used": fitting, "rlimit_nofile": nofile}},
        )
        limits = EdgeLimits(**{**limits.__dict__, "max_connections": fitting})
    trusted = settings.forwarded_allow_ips
    return {
        "http": functools.partial(EdgeProtocol, limits=limits),
        "loop": "uvloop",
        "ws": "none",  # no websocket routes: an Upgrade request is served as plain HTTP
        "timeout_keep_alive": limits.keep_alive_timeout,
        # X-Forwarded-For / -Proto only from the proxies named in FORWARDED_ALLOW_IPS (uvicorn's
        # ProxyHeadersMiddleware); by default from nobody, so the peer address is the client's.
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        "server_header": False,
        "backlog": 2048,
    }
