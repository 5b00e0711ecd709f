"""Deliver NDJSON lines to the ingest API in batches, retrying until each line has an answer or is given up.

The pieces that decide (body encoding, backoff, Retry-After, result accounting) are plain functions and
small classes; `Sender` owns the HTTP round trips and `Pipe` the batching, ordering and reporting.
"""

from __future__ import annotations

import gzip
import json
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import httpx

# "accepted": the API runs buffered (INGEST_BUFFER=jetstream): the batch is durable in its stream and
# a writer stores it; the final results are at the receipt.
ACCEPTED_STATUSES = ("ok", "duplicate", "provisioned", "accepted")
REJECTED_STATUSES = ("invalid", "unauthorized", "error")
NDJSON = "application/x-ndjson"
JSON = "application/json"
INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based line number in the input, for messages
    raw: bytes  # the line as read, without its line break


@dataclass(frozen=True, slots=True)
class Undelivered:
    reason: str


Outcome = dict[str, Any] | Undelivered


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 10
    max_retry_seconds: float = 300.0
    backoff_initial: float = 0.25
    backoff_max: float = 30.0


@dataclass(frozen=True, slots=True)
class PipeConfig:
    url: str = "http://127.0.0.1:8000/ingest"
    batch: int = 500
    linger_ms: float = 200.0
    format: str = "ndjson"
    gzip: bool = False
    concurrency: int = 1
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter: Path | None = None
    progress: bool = False
    verbose: bool = False
    summary_json: bool = False


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


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random.

    The jitter spreads many publishers that failed together; the fixed half keeps the growth.
    """
    step = min(policy.backoff_max, policy.backoff_initial * (2 ** min(attempt, 32)))
    return step / 2 + rng.uniform(0, step / 2)


def is_retryable(status_code: int) -> bool:
    return status_code in (408, 425, 429) or 500 <= status_code <= 599


def results_from_response(response: httpx.Response, expected: int) -> list[dict[str, Any]] | None:
    """Per-item results in input order, or None when the answer is not one result per line."""
    try:
        body = response.json()
    except ValueError:
        return None
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


class Tally:
    """Counters shared by the workers (retries) and the ordered accounting (outcomes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.sent = 0
        self.requests = 0
        self.retried = 0
        self.retried_events = 0
        self.splits = 0
        self.by_status: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()
        self.undelivered_by_reason: Counter[str] = Counter()
        self.skipped_blank = 0

    def add_sent(self, n: int) -> None:
        with self.lock:
            self.sent += n

    def add_request(self) -> None:
        with self.lock:
            self.requests += 1

    def add_retry(self, n_events: int) -> None:
        with self.lock:
            self.retried += 1
            self.retried_events += n_events

    def add_split(self) -> None:
        with self.lock:
            self.splits += 1

    def record(self, outcome: Outcome) -> None:
        with self.lock:
            if isinstance(outcome, Undelivered):
                self.undelivered_by_reason[outcome.reason] += 1
                return
            status = outcome["status"]
            self.by_status[status] += 1
            if status not in ACCEPTED_STATUSES:
                self.rejected_by_reason[str(outcome.get("reason") or status)] += 1

    @property
    def accepted(self) -> int:
        return sum(self.by_status[s] for s in ACCEPTED_STATUSES)

    @property
    def rejected(self) -> int:
        return sum(n for s, n in self.by_status.items() if s not in ACCEPTED_STATUSES)

    @property
    def undelivered(self) -> int:
        return sum(self.undelivered_by_reason.values())

    def summary(self) -> dict[str, Any]:
        with self.lock:
            elapsed = time.monotonic() - self.started
            return {
                "sent": self.sent,
                "accepted": self.accepted,
                "rejected": self.rejected,
                "undelivered": self.undelivered,
                "retried": self.retried,
                "retried_events": self.retried_events,
                "requests": self.requests,
                "splits": self.splits,
                "skipped_blank": self.skipped_blank,
                "by_status": dict(sorted(self.by_status.items())),
                "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
                "undelivered_by_reason": dict(sorted(self.undelivered_by_reason.items())),
                "elapsed_seconds": round(elapsed, 3),
            }


class Sender:
    """Delivers one batch: retries transient failures, splits on 413, gives up per the policy."""

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        tally: Tally,
        *,
        fmt: str = "ndjson",
        compress: bool = False,
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
        log: Callable[[str], None] = lambda message: None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.url = url
        self.tally = tally
        self.fmt = fmt
        self.compress = compress
        self.policy = policy or RetryPolicy()
        self.stop = stop or threading.Event()
        self.log = log
        self.rng = rng or random.Random()

    def deliver(self, lines: list[Line]) -> list[Outcome]:
        """One outcome per line, in order."""
        if not lines:
            return []
        policy = self.policy
        started = time.monotonic()
        attempt = 0
        while True:
            retry_after: float | None = None
            body, headers = encode_body(lines, self.fmt, self.compress)
            self.tally.add_request()
            try:
                response = self.client.post(self.url, content=body, headers=headers)
            except httpx.RequestError as exc:
                failure = f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                status = response.status_code
                if status == 413:
                    return self._split(lines, response)
                if 200 <= status < 300 or status in (401, 422):
                    results = results_from_response(response, len(lines))
                    if results is not None:
                        return list(results)
                    # The answer does not account for every line: sending again is safe (replays add
                    # no facts), giving up could lose lines.
                    failure = f"HTTP {status} with a body that is not one result per line"
                elif is_retryable(status):
                    failure = f"HTTP {status}"
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                else:
                    reason = f"http_{status}"
                    self.log(f"giving up on lines {_span(lines)}: HTTP {status} {_snippet(response)}")
                    return [Undelivered(reason)] * len(lines)

            attempt += 1
            if self.stop.is_set():
                return [Undelivered(INTERRUPTED)] * len(lines)
            delay = max(retry_after or 0.0, backoff_delay(attempt - 1, policy, self.rng))
            if attempt > policy.max_retries or time.monotonic() - started + delay > policy.max_retry_seconds:
                self.log(f"giving up on lines {_span(lines)} after {attempt} attempt(s): {failure}")
                return [Undelivered(_reason_code(failure))] * len(lines)
            self.log(f"lines {_span(lines)}: {failure}; retry {attempt} in {delay:.2f}s")
            self.tally.add_retry(len(lines))
            if self.stop.wait(delay):
                return [Undelivered(INTERRUPTED)] * len(lines)

    def _split(self, lines: list[Line], response: httpx.Response) -> list[Outcome]:
        if len(lines) == 1:
            self.log(f"giving up on line {lines[0].number}: too large even alone {_snippet(response)}")
            return [Undelivered("too_large")]
        self.tally.add_split()
        middle = len(lines) // 2
        return self.deliver(lines[:middle]) + self.deliver(lines[middle:])


def _span(lines: list[Line]) -> str:
    first, last = lines[0].number, lines[-1].number
    return str(first) if first == last else f"{first}-{last}"


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:200]


def _reason_code(failure: str) -> str:
    """A stable bucket for the summary: `http_503`, `ConnectError`, ..."""
    if failure.startswith("HTTP "):
        code = failure.split()[1]
        return f"http_{code}" if code.isdigit() else "bad_response"
    return failure.split(":", 1)[0] or "error"


class DeadLetter:
    """Where undelivered lines go, verbatim, so they can be piped in again later."""

    def __init__(self, path: Path | None, err: TextIO) -> None:
        self.path = path
        self.err = err
        self._file: BinaryIO | None = None

    def write(self, lines: Iterable[Line]) -> None:
        data = b"".join(line.raw + b"\n" for line in lines)
        if not data:
            return
        if self.path is not None:
            if self._file is None:
                # Append: a previous run's dead letters are data too.
                self._file = self.path.open("ab")
            self._file.write(data)
            self._file.flush()
            return
        buffer = getattr(self.err, "buffer", None)
        self.err.flush()
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            self.err.write(data.decode("utf-8", "replace"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


_EOF = object()


class Pipe:
    """Reads lines, batches them (size or linger), delivers on a pool, accounts in input order."""

    def __init__(
        self,
        config: PipeConfig,
        source: BinaryIO,
        err: TextIO,
        client: httpx.Client | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.err = err
        self.tally = Tally()
        self.stop = threading.Event()
        self.interrupted = False
        self._own_client = client is None
        self.client = client or httpx.Client(
            timeout=config.timeout,
            limits=httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency),
        )
        self.sender = Sender(
            self.client,
            config.url,
            self.tally,
            fmt=config.format,
            compress=config.gzip,
            policy=config.retry,
            stop=self.stop,
            log=self.log,
        )
        self.dead_letter = DeadLetter(config.dead_letter, err)
        # Bounded, so a slow API pushes back on the producer instead of buffering the whole stream.
        self.lines: queue.Queue[Any] = queue.Queue(maxsize=max(1000, config.batch * (config.concurrency + 1)))
        self.pending: deque[tuple[list[Line], Future[list[Outcome]]]] = deque()
        self._log_lock = threading.Lock()
        self._progress_width = 0

    def log(self, message: str) -> None:
        with self._log_lock:
            self._clear_progress()
            print(f"pipe_to_api: {message}", file=self.err, flush=True)

    def run(self) -> int:
        """Deliver everything; returns the exit status (0 all delivered, 1 some undelivered, 130 interrupted)."""
        reader = threading.Thread(target=self._read, name="pipe-reader", daemon=True)
        reader.start()
        progress = None
        if self.config.progress:
            progress = threading.Thread(target=self._progress_loop, name="pipe-progress", daemon=True)
            progress.start()
        batch: list[Line] = []
        with ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="pipe-send") as pool:
            try:
                self._loop(pool, batch)
            except KeyboardInterrupt:
                self.interrupted = True
                self.stop.set()
                self.log("interrupted: finishing requests in flight, unsent lines go to the dead letter")
                leftover = list(batch)
                leftover.extend(self._drain_queue())
                self._settle(block=True)
                self._account(leftover, [Undelivered(INTERRUPTED)] * len(leftover))
                self.tally.add_sent(len(leftover))
            finally:
                self._settle(block=True)
        self.stop.set()
        if progress is not None:
            progress.join(timeout=2)
        self.dead_letter.close()
        if self._own_client:
            self.client.close()
        if self.interrupted:
            return 130
        return 1 if self.tally.undelivered else 0

    def _read(self) -> None:
        try:
            for number, raw in enumerate(self.source, 1):
                self.lines.put(Line(number, raw.rstrip(b"\r\n")))
        except (OSError, ValueError) as exc:
            self.log(f"stopped reading input: {exc}")
        finally:
            self.lines.put(_EOF)

    def _drain_queue(self) -> list[Line]:
        out: list[Line] = []
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return out
            if item is not _EOF and item.raw.strip():
                out.append(item)

    def _loop(self, pool: ThreadPoolExecutor, batch: list[Line]) -> None:
        linger = self.config.linger_ms / 1000.0
        first_at = 0.0
        while True:
            timeout: float | None = None
            if batch:
                timeout = max(0.0, first_at + linger - time.monotonic())
            if self.pending:
                # Keep accounting (and --progress) current while waiting for input.
                timeout = 0.05 if timeout is None else min(timeout, 0.05)
            try:
                item = self.lines.get(timeout=timeout)
            except queue.Empty:
                self._settle(block=False)
                if batch and time.monotonic() - first_at >= linger:
                    self._submit(pool, batch)
                continue
            if item is _EOF:
                break
            if not item.raw.strip():
                # The API skips blank NDJSON lines, so they would break the one-result-per-line count.
                with self.tally.lock:
                    self.tally.skipped_blank += 1
                continue
            if not batch:
                first_at = time.monotonic()
            batch.append(item)
            if len(batch) >= self.config.batch:
                self._submit(pool, batch)
        if batch:
            self._submit(pool, batch)

    def _submit(self, pool: ThreadPoolExecutor, batch: list[Line]) -> None:
        lines = list(batch)
        batch.clear()
        self.tally.add_sent(len(lines))
        self.pending.append((lines, pool.submit(self.sender.deliver, lines)))
        self._settle(block=False)
        while len(self.pending) >= self.config.concurrency + 1:
            self._settle_one()

    def _settle(self, block: bool) -> None:
        """Account finished batches in submission order (all of them when `block`)."""
        while self.pending and (block or self.pending[0][1].done()):
            self._settle_one()

    def _settle_one(self) -> None:
        lines, future = self.pending[0]
        try:
            outcomes = future.result()
        except Exception as exc:  # a bug in delivery must not lose the lines
            self.log(f"delivery of lines {_span(lines)} failed: {exc!r}")
            outcomes = [Undelivered("internal_error")] * len(lines)
        self.pending.popleft()
        self._account(lines, outcomes)

    def _account(self, lines: list[Line], outcomes: list[Outcome]) -> None:
        dead: list[Line] = []
        for line, outcome in zip(lines, outcomes, strict=True):
            self.tally.record(outcome)
            if isinstance(outcome, Undelivered):
                dead.append(line)
            if self.config.verbose:
                self._print_result(line, outcome)
        if dead:
            with self._log_lock:
                self._clear_progress()
                self.dead_letter.write(dead)

    def _print_result(self, line: Line, outcome: Outcome) -> None:
        if isinstance(outcome, Undelivered):
            record: dict[str, Any] = {"line": line.number, "status": "undelivered", "reason": outcome.reason}
        else:
            record = {"line": line.number, **outcome}
        with self._log_lock:
            self._clear_progress()
            print(json.dumps(record), file=self.err, flush=True)

    # progress -------------------------------------------------------------------------------------

    def _clear_progress(self) -> None:
        if self._progress_width:
            self.err.write("\r" + " " * self._progress_width + "\r")
            self._progress_width = 0

    def _progress_loop(self) -> None:
        tty = bool(getattr(self.err, "isatty", lambda: False)())
        interval = 0.5 if tty else 5.0
        last_done, last_at = 0, time.monotonic()
        while not self.stop.wait(interval):
            last_done, last_at = self._print_progress(tty, last_done, last_at)
        self._print_progress(tty, last_done, last_at)
        if tty:
            with self._log_lock:
                self.err.write("\n")
                self._progress_width = 0

    def _print_progress(self, tty: bool, last_done: int, last_at: float) -> tuple[int, float]:
        t = self.tally
        with t.lock:
            done = t.accepted + t.rejected + t.undelivered
            text = (
                f"sent {t.sent}  accepted {t.accepted}  rejected {t.rejected}  "
                f"undelivered {t.undelivered}  retried {t.retried}"
            )
        now = time.monotonic()
        rate = (done - last_done) / (now - last_at) if now > last_at else 0.0
        text = f"{rate:8.1f} events/s  {text}"
        with self._log_lock:
            if tty:
                self._clear_progress()
                self.err.write(text)
                self._progress_width = len(text)
            else:
                self.err.write(text + "\n")
            self.err.flush()
        return done, now


def format_summary(summary: dict[str, Any]) -> str:
    statuses = ", ".join(f"{status} {n}" for status, n in summary["by_status"].items()) or "none"
    text = (
        f"sent {summary['sent']}, accepted {summary['accepted']}, rejected {summary['rejected']}, "
        f"undelivered {summary['undelivered']}, retried {summary['retried']} "
        f"({summary['requests']} requests, {summary['splits']} splits) in {summary['elapsed_seconds']}s; "
        f"by status: {statuses}"
    )
    if summary["rejected_by_reason"]:
        text += "; rejected by reason: " + ", ".join(f"{r} {n}" for r, n in summary["rejected_by_reason"].items())
    if summary["undelivered_by_reason"]:
        text += "; undelivered: " + ", ".join(f"{r} {n}" for r, n in summary["undelivered_by_reason"].items())
    return text
