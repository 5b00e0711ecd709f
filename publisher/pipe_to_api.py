#!/usr/bin/env python3
"""Pipe NDJSON from stdin to the platform in batches (HTTP or MQTT), with retries; never drops a line silently.

Exit status: 0 every line got an answer from the API (accepted or rejected), 1 some lines were
undelivered (written to the dead letter), 2 bad usage, 130 interrupted. See docs/publisher.md.
"""

from __future__ import annotations

import sys

if not __package__:
    # Run as `python publisher/pipe_to_api.py`: put the repo root, not publisher/, first on the path,
    # so `publisher.*` imports and publisher/ modules cannot shadow top-level ones.
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])

import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import BinaryIO, TextIO  # noqa: E402

from publisher.delivery.pipe import Pipe  # noqa: E402
from publisher.settings import PipeSettings, parse_args  # noqa: E402


def _interrupt_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C: a supervisor stopping us still gets the summary and the dead letter."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def main(
    argv: Sequence[str] | None = None,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    settings = parse_args(
        argv,
        prog="pipe_to_api",
        description="Read NDJSON events from stdin and deliver them in batches: POST to the ingest API, "
        "or publish over MQTT.",
        models=[PipeSettings],
    )[PipeSettings]
    _interrupt_on_sigterm()
    pipe = Pipe(settings, stdin, stderr)
    status = pipe.run()
    pipe.report(stdout)
    return status


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The stdin reader is a daemon thread that may still block in read(); interpreter shutdown
    # would then abort on the stdin lock ("could not acquire lock ... at interpreter shutdown").
    os._exit(code)
