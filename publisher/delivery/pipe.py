"""Read lines, batch them (size or linger), keep batches in flight, account for every line in input order."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TextIO

from publisher.delivery.accounting import Tally, format_summary
from publisher.delivery.config import PipeConfig
from publisher.delivery.console import Console
from publisher.delivery.dead_letter import DeadLetter
from publisher.delivery.items import INTERRUPTED, Line, Outcome, Undelivered, span
from publisher.delivery.retry import Sender
from publisher.delivery.transport import Transport, open_transport

_EOF = object()

# Called once per line, in input order, with its outcome (the simulator learns provisioned ids so).
ResultHook = Callable[[Line, Outcome], None]


class Pipe:
    """Delivers every line of `source` (an iterable of lines, e.g. a binary stdin) through a transport."""

    def __init__(
        self,
        config: PipeConfig,
        source: Iterable[bytes],
        err: TextIO,
        *,
        transport: Transport | None = None,
        name: str = "pipe_to_api",
        on_result: ResultHook | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.tally = Tally()
        self.console = Console(err, name, self.tally)
        self.stop = threading.Event()
        self.interrupted = False
        self.on_result = on_result
        self.transport = transport or open_transport(config)
        self.sender = Sender(self.transport, self.tally, config, stop=self.stop, log=self.console.log)
        self.dead_letter = DeadLetter(config.dead_letter, err)
        # Bounded, so a slow platform pushes back on the producer instead of buffering the whole stream.
        self.lines: queue.Queue[Any] = queue.Queue(maxsize=max(1000, config.batch * (config.concurrency + 1)))
        self.pending: deque[tuple[list[Line], Future[list[Outcome]]]] = deque()

    def run(self) -> int:
        """Deliver everything; returns the exit status (0 all delivered, 1 some undelivered, 130 interrupted)."""
        reader = threading.Thread(target=self._read, name="pipe-reader", daemon=True)
        reader.start()
        if self.config.progress:
            self.console.start_progress()
        batch: list[Line] = []
        with ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="pipe-send") as pool:
            try:
                self._loop(pool, batch)
            except KeyboardInterrupt:
                self.interrupted = True
                self.stop.set()
                self.console.log("interrupted: finishing requests in flight, unsent lines go to the dead letter")
                leftover = list(batch)
                leftover.extend(self._drain_queue())
                self._settle(block=True)
                self._account(leftover, [Undelivered(INTERRUPTED)] * len(leftover))
                self.tally.add_sent(len(leftover))
            finally:
                self._settle(block=True)
        self.stop.set()
        self.console.stop_progress()
        self.dead_letter.close()
        self.transport.close()
        if self.interrupted:
            return 130
        return 1 if self.tally.undelivered else 0

    def report(self, stdout: TextIO) -> None:
        """The summary on stderr (and as JSON on stdout with --summary-json)."""
        summary = self.tally.summary()
        self.console.log(format_summary(summary))
        if summary["undelivered"]:
            where = self.config.dead_letter or "stderr"
            self.console.log(f"{summary['undelivered']} line(s) undelivered, written to {where}")
        if self.config.summary_json:
            print(json.dumps(summary), file=stdout, flush=True)

    def _read(self) -> None:
        try:
            for number, raw in enumerate(self.source, 1):
                self.lines.put(Line(number, raw.rstrip(b"\r\n")))
        except (OSError, ValueError) as exc:
            self.console.log(f"stopped reading input: {exc}")
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
                self.tally.add_skipped_blank()
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
            self.console.log(f"delivery of lines {span(lines)} failed: {exc!r}")
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
                self.console.result(line, outcome)
            if self.on_result is not None:
                self.on_result(line, outcome)
        if dead:
            with self.console.exclusive():
                self.dead_letter.write(dead)
