#!/usr/bin/env python3
"""Pipe NDJSON from stdin to the ingest API in batches, with retries; never drops a line silently.

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

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import BinaryIO, TextIO  # noqa: E402

import httpx  # noqa: E402

from publisher.delivery import Pipe, PipeConfig, RetryPolicy, format_summary  # noqa: E402
from publisher.settings import PipeSettings, SettingsError  # noqa: E402


def build_parser(defaults: PipeSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipe_to_api",
        description="Read NDJSON events from stdin and POST them to the ingest API in batches.",
        epilog="Each option's default comes from the environment variable in brackets, else the value shown.",
    )
    add = parser.add_argument
    add("--url", default=defaults.url, help="ingest endpoint [PIPE_URL] (%(default)s)")
    add("--batch", type=int, default=defaults.batch, help="events per request [PIPE_BATCH] (%(default)s)")
    add(
        "--linger-ms",
        type=float,
        default=defaults.linger_ms,
        help="send a partial batch once its first line has waited this long [PIPE_LINGER_MS] (%(default)s)",
    )
    add(
        "--format",
        choices=("ndjson", "json"),
        default=defaults.format,
        help="request body: NDJSON lines (default; carries lines that are not JSON), or a JSON array "
        "(a batch holding a non-JSON line is sent as NDJSON) [PIPE_FORMAT] (%(default)s)",
    )
    add(
        "--gzip",
        action=argparse.BooleanOptionalAction,
        default=defaults.gzip,
        help="gzip request bodies (Content-Encoding: gzip) [PIPE_GZIP]",
    )
    add(
        "--concurrency",
        type=int,
        default=defaults.concurrency,
        help="requests in flight; results are still accounted in input order [PIPE_CONCURRENCY] (%(default)s)",
    )
    add(
        "--timeout",
        type=float,
        default=defaults.timeout,
        help="seconds per request before it counts as failed and is retried [PIPE_TIMEOUT] (%(default)s)",
    )
    add(
        "--max-retries",
        type=int,
        default=defaults.max_retries,
        help="retries per batch before its lines are undelivered [PIPE_MAX_RETRIES] (%(default)s)",
    )
    add(
        "--max-retry-seconds",
        type=float,
        default=defaults.max_retry_seconds,
        help="time budget per batch for retries [PIPE_MAX_RETRY_SECONDS] (%(default)s)",
    )
    add(
        "--backoff-initial",
        type=float,
        default=defaults.backoff_initial,
        help="first backoff step in seconds, doubling per retry [PIPE_BACKOFF_INITIAL] (%(default)s)",
    )
    add(
        "--backoff-max",
        type=float,
        default=defaults.backoff_max,
        help="cap of the backoff step in seconds (Retry-After may ask for more) [PIPE_BACKOFF_MAX] (%(default)s)",
    )
    add(
        "--dead-letter",
        type=Path,
        default=defaults.dead_letter,
        metavar="FILE",
        help="append undelivered lines here, verbatim; default: stderr [PIPE_DEAD_LETTER]",
    )
    add("--progress", action="store_true", help="live one-line progress on stderr")
    add("--verbose", "-v", action="store_true", help="print each line's result (JSON) on stderr")
    add("--summary-json", action="store_true", help="print the final counts as one JSON line on stdout")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    positive = {"batch": args.batch, "concurrency": args.concurrency, "timeout": args.timeout}
    for name, value in positive.items():
        if value <= 0:
            parser.error(f"--{name} must be positive")
    for name in ("linger_ms", "max_retries", "max_retry_seconds", "backoff_initial", "backoff_max"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    try:
        url = httpx.URL(args.url)
    except httpx.InvalidURL as exc:
        parser.error(f"--url: {exc}")
    if url.scheme not in ("http", "https") or not url.host:
        parser.error(f"--url must be an http(s) URL, got {args.url!r}")


def config_from_args(args: argparse.Namespace) -> PipeConfig:
    return PipeConfig(
        url=args.url,
        batch=args.batch,
        linger_ms=args.linger_ms,
        format=args.format,
        gzip=args.gzip,
        concurrency=args.concurrency,
        timeout=args.timeout,
        retry=RetryPolicy(
            max_retries=args.max_retries,
            max_retry_seconds=args.max_retry_seconds,
            backoff_initial=args.backoff_initial,
            backoff_max=args.backoff_max,
        ),
        dead_letter=args.dead_letter,
        progress=args.progress,
        verbose=args.verbose,
        summary_json=args.summary_json,
    )


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
    try:
        defaults = PipeSettings.from_env()
    except SettingsError as exc:
        print(f"invalid environment: {exc}", file=stderr)
        return 2
    parser = build_parser(defaults)
    args = parser.parse_args(argv)
    check_args(parser, args)

    _interrupt_on_sigterm()
    pipe = Pipe(config_from_args(args), stdin, stderr)
    status = pipe.run()
    summary = pipe.tally.summary()
    print(f"pipe_to_api: {format_summary(summary)}", file=stderr, flush=True)
    if summary["undelivered"]:
        where = args.dead_letter or "stderr"
        print(f"pipe_to_api: {summary['undelivered']} line(s) undelivered, written to {where}", file=stderr)
    if args.summary_json:
        print(json.dumps(summary), file=stdout, flush=True)
    return status


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The stdin reader is a daemon thread that may still block in read(); interpreter shutdown
    # would then abort on the stdin lock ("could not acquire lock ... at interpreter shutdown").
    os._exit(code)
