"""What goes to stderr while delivering: log lines, `--verbose` results, the `--progress` line.

One lock, so a log line, a result and the redrawn progress line never interleave.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from publisher.delivery.accounting import Tally
from publisher.delivery.items import Line, Outcome, Undelivered


class Console:
    def __init__(self, err: TextIO, name: str, tally: Tally) -> None:
        self.err = err
        self.name = name
        self.tally = tally
        self._lock = threading.Lock()
        self._progress_width = 0
        self._progress: threading.Thread | None = None
        self._progress_stop = threading.Event()

    @contextmanager
    def exclusive(self) -> Iterator[TextIO]:
        """stderr for one write, with the progress line cleared first."""
        with self._lock:
            self._clear_progress()
            yield self.err

    def log(self, message: str) -> None:
        with self.exclusive() as err:
            print(f"{self.name}: {message}", file=err, flush=True)

    def result(self, line: Line, outcome: Outcome) -> None:
        """`{"line": n, ...the answer}`, or `{"line": n, "status": "undelivered", "reason": ...}`."""
        if isinstance(outcome, Undelivered):
            record: dict[str, Any] = {"line": line.number, "status": "undelivered", "reason": outcome.reason}
        else:
            record = {"line": line.number, **outcome}
        with self.exclusive() as err:
            print(json.dumps(record), file=err, flush=True)

    # progress -------------------------------------------------------------------------------------

    def start_progress(self) -> None:
        self._progress = threading.Thread(target=self._progress_loop, name="progress", daemon=True)
        self._progress.start()

    def stop_progress(self) -> None:
        if self._progress is not None:
            self._progress_stop.set()
            self._progress.join(timeout=2)

    def _clear_progress(self) -> None:
        if self._progress_width:
            self.err.write("\r" + " " * self._progress_width + "\r")
            self._progress_width = 0

    def _progress_loop(self) -> None:
        tty = bool(getattr(self.err, "isatty", lambda: False)())
        interval = 0.5 if tty else 5.0
        last_done, last_at = 0, time.monotonic()
        while not self._progress_stop.wait(interval):
            last_done, last_at = self._print_progress(tty, last_done, last_at)
        self._print_progress(tty, last_done, last_at)
        if tty:
            with self._lock:
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
        with self._lock:
            if tty:
                self._clear_progress()
                self.err.write(text)
                self._progress_width = len(text)
            else:
                self.err.write(text + "\n")
            self.err.flush()
        return done, now
