"""pipe_to_api against a real local HTTP server that answers like the ingest API."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from tenacity import RetryCallState

from publisher.delivery.config import RetryPolicy
from publisher.delivery.http_transport import encode_body, parse_retry_after, results_from_response
from publisher.delivery.items import Line
from publisher.delivery.retry import backoff
from publisher.iot_device_message_generator import main as generator_main
from publisher.pipe_to_api import main
from tests.publisher.fake_api import running_api

REPO = Path(__file__).resolve().parents[2]
FAST_RETRY = ["--backoff-initial", "0.01", "--backoff-max", "0.05"]


def event(i: int) -> bytes:
    return json.dumps(
        {"device_id": i % 5 + 1, "event_type": "platform_height_mm", "value": i % 200, "timestamp": 1_700_000_000 + i}
    ).encode()


def lines_of(n: int) -> list[bytes]:
    return [event(i) for i in range(n)]


def run_pipe(args: list[str], lines: list[bytes]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    stdin = io.BytesIO(b"".join(line + b"\n" for line in lines))
    status = main(args, stdin=stdin, stdout=stdout, stderr=stderr)
    return status, stdout.getvalue(), stderr.getvalue()


def summary_of(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_delivers_every_line_in_order_with_per_item_accounting() -> None:
    lines = lines_of(1234)
    lines[10] = b"this is not json"
    lines[11] = b"{}"
    lines[12] = b'{"event_type": "battery_charge", "value": "high"}'
    with running_api() as api:
        status, out, err = run_pipe(["--url", api.url, "--batch", "100", "--summary-json"], lines)
    assert status == 0, err
    assert api.stored == lines  # every line, verbatim, once, in order
    assert all(r.content_type == "application/x-ndjson" for r in api.requests)
    assert max(len(r.items) for r in api.requests) == 100
    summary = summary_of(out)
    assert summary["sent"] == 1234
    assert summary["accepted"] == 1231
    assert summary["rejected"] == 3
    assert summary["undelivered"] == 0
    assert summary["retried"] == 0
    assert summary["rejected_by_reason"] == {"invalid_json": 1, "missing_field": 2}
    assert "accepted 1231" in err


def test_blank_lines_are_skipped_like_the_api_does() -> None:
    lines = [event(1), b"", b"   ", event(2)]
    with running_api() as api:
        status, out, _ = run_pipe(["--url", api.url, "--summary-json"], lines)
    assert status == 0
    assert api.stored == [event(1), event(2)]
    assert summary_of(out)["skipped_blank"] == 2


def test_json_format_sends_arrays_and_falls_back_to_ndjson_for_non_json_lines() -> None:
    lines = lines_of(10) + [b"not json"] + lines_of(3)
    with running_api() as api:
        status, out, _ = run_pipe(["--url", api.url, "--batch", "10", "--format", "json", "--summary-json"], lines)
    assert status == 0
    assert [r.content_type for r in api.requests] == ["application/json", "application/x-ndjson"]
    assert [len(r.items) for r in api.requests] == [10, 4]
    assert summary_of(out)["rejected_by_reason"] == {"invalid_json": 1}


def test_gzip_bodies() -> None:
    lines = lines_of(50)
    with running_api() as api:
        status, _, _ = run_pipe(["--url", api.url, "--gzip"], lines)
    assert status == 0
    assert api.requests[0].content_encoding == "gzip"
    assert api.stored == lines


def test_retries_503_honouring_retry_after() -> None:
    lines = lines_of(20)
    # Backoff alone would wait ~10 ms; only Retry-After explains a wait of a second.
    with running_api(script=[("status", 503, 1), ("status", 503, "0.3")]) as api:
        started = time.monotonic()
        status, out, err = run_pipe(["--url", api.url, "--summary-json", *FAST_RETRY], lines)
        elapsed = time.monotonic() - started
    assert status == 0, err
    assert elapsed >= 1.3
    assert api.stored == lines  # 503 stored nothing, the retry stored everything once
    summary = summary_of(out)
    assert summary["retried"] == 2
    assert summary["accepted"] == 20
    assert "HTTP 503; retry 1 in 1.00s" in err


def test_retries_429_and_dropped_connections() -> None:
    lines = lines_of(30)
    with running_api(script=["drop", ("status", 429, None), "drop"]) as api:
        status, out, _ = run_pipe(["--url", api.url, "--summary-json", *FAST_RETRY], lines)
    assert status == 0
    assert api.stored == lines
    assert summary_of(out)["retried"] == 3


def test_connection_refused_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    with running_api() as api:
        url = api.url  # the server is gone after this block: nothing listens on the port
    dead = tmp_path / "dead.ndjson"
    lines = lines_of(7)
    status, out, err = run_pipe(
        ["--url", url, "--max-retries", "2", "--dead-letter", str(dead), "--summary-json", *FAST_RETRY], lines
    )
    assert status == 1
    assert dead.read_bytes() == b"".join(line + b"\n" for line in lines)
    summary = summary_of(out)
    assert summary["undelivered"] == 7
    assert summary["retried"] == 2
    assert summary["undelivered_by_reason"] == {"ConnectError": 7}
    assert "7 line(s) undelivered" in err


def test_413_splits_the_batch_until_it_fits() -> None:
    lines = lines_of(200)
    with running_api(max_items=30) as api:
        status, out, err = run_pipe(["--url", api.url, "--batch", "200", "--summary-json"], lines)
    assert status == 0, err
    assert api.stored == lines  # order kept across the halves
    assert all(len(r.items) <= 30 for r in api.requests)
    summary = summary_of(out)
    assert summary["splits"] > 0
    assert summary["accepted"] == 200
    assert summary["retried"] == 0


def test_a_single_line_too_large_is_undelivered_not_dropped() -> None:
    with running_api(max_items=0) as api:
        status, out, err = run_pipe(["--url", api.url, "--summary-json"], [event(1), event(2)])
    assert status == 1
    assert api.stored == []
    assert summary_of(out)["undelivered_by_reason"] == {"too_large": 2}
    # Without --dead-letter the lines themselves go to stderr, verbatim.
    assert event(1).decode() + "\n" in err and event(2).decode() + "\n" in err


def test_gives_up_after_max_retries_with_dead_letter_in_order(tmp_path: Path) -> None:
    dead = tmp_path / "dead.ndjson"
    lines = lines_of(25)
    # Batches of 10: the first gets through, the second fails 3 times (gives up), the third gets through.
    script = ["ok", ("status", 500, None), ("status", 500, None), ("status", 500, None)]
    with running_api(script=script) as api:
        status, out, err = run_pipe(
            [
                "--url",
                api.url,
                "--batch",
                "10",
                "--max-retries",
                "2",
                "--dead-letter",
                str(dead),
                "--summary-json",
                *FAST_RETRY,
            ],
            lines,
        )
    assert status == 1
    assert api.stored == lines[:10] + lines[20:]
    assert dead.read_bytes() == b"".join(line + b"\n" for line in lines[10:20])
    summary = summary_of(out)
    assert (summary["sent"], summary["accepted"], summary["undelivered"]) == (25, 15, 10)
    assert summary["undelivered_by_reason"] == {"http_500": 10}
    assert "giving up on lines 11-20 after 3 attempt(s): HTTP 500" in err


def test_retry_time_budget_gives_up_before_a_long_retry_after(tmp_path: Path) -> None:
    dead = tmp_path / "dead.ndjson"
    with running_api(script=[("status", 503, 60)]) as api:
        started = time.monotonic()
        status, _, _ = run_pipe(["--url", api.url, "--max-retry-seconds", "5", "--dead-letter", str(dead)], lines_of(3))
    assert time.monotonic() - started < 5
    assert status == 1
    assert len(dead.read_bytes().splitlines()) == 3


def test_client_errors_are_not_retried() -> None:
    with running_api(script=[("status", 400, None)]) as api:
        status, out, _ = run_pipe(["--url", api.url, "--summary-json"], lines_of(4))
    assert status == 1
    summary = summary_of(out)
    assert summary["retried"] == 0
    assert summary["undelivered_by_reason"] == {"http_400": 4}


def test_an_answer_without_one_result_per_line_is_retried() -> None:
    lines = lines_of(5)
    with running_api(script=["bad_body"]) as api:
        status, out, _ = run_pipe(["--url", api.url, "--summary-json", *FAST_RETRY], lines)
    assert status == 0
    summary = summary_of(out)
    assert summary["retried"] == 1
    # The replay reached the ledger twice; the API's idempotency makes the second a duplicate.
    assert summary["by_status"] == {"duplicate": 5}


def test_concurrency_keeps_input_order_in_accounting() -> None:
    lines = lines_of(400)
    with running_api(delay=0.02, script=["ok", ("status", 503, "0.2")]) as api:
        status, out, err = run_pipe(
            ["--url", api.url, "--batch", "20", "--concurrency", "4", "--verbose", "--summary-json", *FAST_RETRY],
            lines,
        )
    assert status == 0, err
    assert sorted(api.stored) == sorted(lines)
    results = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [r["line"] for r in results] == list(range(1, 401))
    assert all(r["status"] == "ok" for r in results)
    assert summary_of(out)["accepted"] == 400


def test_linger_flushes_a_partial_batch_when_input_is_slow() -> None:
    read_fd, write_fd = os.pipe()
    stdout, stderr = io.StringIO(), io.StringIO()
    with running_api() as api, os.fdopen(read_fd, "rb") as source:
        runner = threading.Thread(
            target=main,
            args=(["--url", api.url, "--batch", "500", "--linger-ms", "50"], source, stdout, stderr),
        )
        runner.start()
        with os.fdopen(write_fd, "wb") as sink:
            sink.write(event(1) + b"\n" + event(2) + b"\n")
            sink.flush()
            deadline = time.monotonic() + 5
            while not api.stored and time.monotonic() < deadline:
                time.sleep(0.01)
            # Delivered while the input is still open: the linger, not EOF, sent it.
            assert api.stored == [event(1), event(2)]
            sink.write(event(3) + b"\n")
        runner.join(timeout=10)
    assert api.stored == [event(1), event(2), event(3)]


def test_generator_piped_into_pipe_to_api_as_processes(capsys: pytest.CaptureFixture[str]) -> None:
    python = sys.executable
    options = [
        "--seed",
        "3",
        "--count",
        "600",
        "--rate",
        "0",
        "--new-firmware-share",
        "0.5",
        "--upgrade-rate",
        "0.02",
        "--start-time",
        "1700000000",
    ]
    assert generator_main(options) == 0
    expected = capsys.readouterr().out.encode()
    gen = [python, "-m", "publisher.iot_device_message_generator", *options]
    with running_api() as api:
        producer = subprocess.Popen(gen, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        consumer = subprocess.run(
            [python, "publisher/pipe_to_api.py", "--url", api.url, "--batch", "64", "--summary-json", "--progress"],
            cwd=REPO,
            stdin=producer.stdout,
            capture_output=True,
            timeout=60,
        )
        producer.stdout.close()
        producer.wait(timeout=10)
    assert consumer.returncode == 0, consumer.stderr
    assert b"".join(item + b"\n" for item in api.stored) == expected
    summary = json.loads(consumer.stdout)
    assert summary["sent"] == 600
    assert summary["accepted"] + summary["rejected"] == 600
    assert summary["by_status"]["provisioned"] > 0
    assert b"events/s" in consumer.stderr


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("0.5", 0.5), ("-4", 0.0), ("", None), (None, None), ("soon", None), ("nan", None)],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now=now) == pytest.approx(20.0)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(backoff_initial=0.5, backoff_max=8.0)
    wait = backoff(policy)
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    for attempt, step in enumerate([0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]):
        state.attempt_number = attempt + 1  # tenacity counts attempts from 1
        delays = [wait(state) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_encode_body() -> None:
    lines = [Line(1, b'{"a": 1}'), Line(2, b"[2]")]
    body, headers = encode_body(lines, "json")
    assert (body, headers) == (b'[{"a": 1},[2]]', {"Content-Type": "application/json"})
    body, headers = encode_body([*lines, Line(3, b'{"v": NaN}')], "json", compress=True)
    assert headers == {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    assert gzip.decompress(body) == b'{"a": 1}\n[2]\n{"v": NaN}\n'


def test_sigterm_dead_letters_what_is_not_delivered(tmp_path: Path) -> None:
    dead = tmp_path / "dead.ndjson"
    with running_api(script=[("status", 503, 30)] * 5) as api:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "publisher.pipe_to_api",
                "--url",
                api.url,
                "--linger-ms",
                "0",
                "--dead-letter",
                str(dead),
                "--summary-json",
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(b"".join(line + b"\n" for line in lines_of(5)))
        proc.stdin.flush()
        deadline = time.monotonic() + 15
        while not api.script_used() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert dead.read_bytes() == b"".join(line + b"\n" for line in lines_of(5))
    assert json.loads(out)["undelivered_by_reason"] == {"interrupted": 5}


def test_a_buffered_202_accepts_every_line_of_the_batch() -> None:
    """Buffered mode (INGEST_BUFFER=jetstream) answers a batch with one receipt: every line is
    accepted (durable in the stream); a receipt for another item count accounts for nothing."""
    receipt = {"status": "accepted", "receipt": "js-" + "a" * 32 + "-7", "items": 3}
    results = results_from_response(httpx.Response(202, json=receipt), 3)
    assert results == [{"status": "accepted", "receipt": receipt["receipt"], "batch_index": i} for i in range(3)]
    assert results_from_response(httpx.Response(202, json=receipt), 2) is None
