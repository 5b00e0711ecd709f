"""SIGTERM: uvicorn stops accepting, finishes the requests in flight (answered after commit), then exits."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from tests.reliability.procs import Api, wait_for
from tests.utils.events import telemetry

IN_FLIGHT = 5


def _lock_waiters(conn: psycopg.Connection) -> int:
    row = conn.execute(
        """select count(*) from pg_stat_activity
           where datname = current_database() and application_name = 'ingest_service' and wait_event_type = 'Lock'"""
    ).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_finishes_in_flight_requests_before_exit(fresh_db: DatabaseTarget, tmp_path: Path) -> None:
    api = Api(fresh_db.url, tmp_path / "api.log", env_overrides={"REQUEST_TIMEOUT_SECONDS": "30"})
    api.start(migrate=False)
    locker = psycopg.connect(fresh_db.url)
    watcher = psycopg.connect(fresh_db.url, autocommit=True)
    try:
        # hold the ledger so the requests are provably in flight when the signal arrives
        locker.execute("lock table ingest.raw_record in access exclusive mode")
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            batches = [[telemetry(device_id=i + 1, value=i), telemetry(device_id=i + 1, value=-i)] for i in range(5)]
            futures = [pool.submit(httpx.post, api.base + "/ingest", json=b, timeout=60) for b in batches]
            assert wait_for(lambda: _lock_waiters(watcher) >= 1, 20), "requests never reached the database"
            time.sleep(1.0)  # let every request be read and queued
            api.signal(signal.SIGTERM)
            time.sleep(1.0)
            assert api.process is not None and api.process.poll() is None, "exited with requests in flight"
            with pytest.raises(httpx.TransportError):  # no new connections once shutting down
                httpx.get(api.base + "/healthz", timeout=2)
            locker.rollback()  # the database moves again: in-flight requests commit and are answered
            responses = [f.result(timeout=40) for f in futures]
        assert [r.status_code for r in responses] == [200] * IN_FLIGHT
        raw_ids = [item["raw_id"] for r in responses for item in r.json()]
        assert all(item["status"] == "ok" for r in responses for item in r.json())
        # uvicorn re-raises the captured SIGTERM once shut down, so the exit status says why it stopped
        assert api.wait_exit(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in (tmp_path / "api.log").read_text()
        stored = watcher.execute("select count(*) from ingest.raw_record where id = any(%s)", (raw_ids,)).fetchone()
        assert stored == (2 * IN_FLIGHT,)
    finally:
        locker.close()
        watcher.close()
        api.kill()
