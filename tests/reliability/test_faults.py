"""Faults with real processes: the publisher streams at full speed through pipe_to_api into a running
`iot-platform serve` while PostgreSQL is crash-restarted or the API is SIGKILLed. Nothing acknowledged
is lost, everything unacknowledged is retried, and facts land once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.reliability.ledger import reconcile
from tests.reliability.procs import (
    Api,
    OwnedPostgres,
    connect,
    count_results,
    generate_events,
    pipe_results,
    start_pipe,
    wait_for,
)

EVENTS = 12_000


def _stream_until(pipe: subprocess.Popen, err: Path, answered: int) -> None:
    """Wait until `answered` lines have their result: the fault then hits a stream in full flow."""
    reached = wait_for(lambda: count_results(err) >= answered or pipe.poll() is not None, 90, interval=0.1)
    assert reached, "pipe_to_api made no progress"
    assert pipe.poll() is None, "the stream finished before the fault; raise EVENTS"


def _finish(pipe: subprocess.Popen) -> dict:
    out, _ = pipe.communicate(timeout=150)
    assert pipe.returncode == 0, f"pipe_to_api exited {pipe.returncode}"
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_postgres_immediate_restart_mid_stream_loses_nothing(owned_pg: OwnedPostgres, tmp_path: Path) -> None:
    url = owned_pg.url("iot_fault_pg")
    events, err = tmp_path / "events.ndjson", tmp_path / "pipe.err"
    lines = generate_events(events, EVENTS, seed=11)
    api = Api(url, tmp_path / "api.log").start()
    try:
        pipe = start_pipe(api.base + "/ingest", events, err)
        _stream_until(pipe, err, EVENTS // 4)
        down_seconds = owned_pg.restart_immediate()
        summary = _finish(pipe)
        assert summary["undelivered"] == 0
        assert summary["retried"] > 0, "the restart was not noticed: no request failed"
        # the API survived the database's crash and is ready again
        assert api.process is not None and api.process.poll() is None
        assert httpx.get(api.base + "/readyz", timeout=5).status_code == 200
        with connect(url, autocommit=True) as conn:
            counts = reconcile(conn, lines, pipe_results(err))
    finally:
        api.kill()
    counts.update(retried_requests=summary["retried"], retried_events=summary["retried_events"])
    print(f"\nFAULT postgres immediate restart ({down_seconds:.1f} s down): {json.dumps(counts)}")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_api_sigkill_mid_stream_and_restart_loses_nothing(owned_pg: OwnedPostgres, tmp_path: Path) -> None:
    url = owned_pg.url("iot_fault_api")
    events, err = tmp_path / "events.ndjson", tmp_path / "pipe.err"
    lines = generate_events(events, EVENTS, seed=12)
    log = tmp_path / "api.log"
    api = Api(url, log).start()
    restarted: Api | None = None
    try:
        pipe = start_pipe(api.base + "/ingest", events, err)
        _stream_until(pipe, err, EVENTS // 4)
        api.kill()
        restarted = Api(url, log, port=api.port).start(migrate=False)
        summary = _finish(pipe)
        assert summary["undelivered"] == 0
        assert summary["retried"] > 0, "the kill was not noticed: no request failed"
        with connect(url, autocommit=True) as conn:
            counts = reconcile(conn, lines, pipe_results(err))
    finally:
        api.kill()
        if restarted is not None:
            restarted.kill()
    counts.update(retried_requests=summary["retried"], retried_events=summary["retried_events"])
    print(f"\nFAULT API SIGKILL + restart: {json.dumps(counts)}")
