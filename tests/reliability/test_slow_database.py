"""A slow or locked database: the API answers 503 + Retry-After within a bounded time instead of
hanging, stores nothing it did not acknowledge, and /readyz turns unready and back."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.database import DatabaseTarget
from ingest_service.main import create_app
from tests.ingest_service.conftest import make_settings
from tests.utils.events import telemetry

TIMEOUT = 1.0
# queue wait + pool wait + one statement, each bounded by REQUEST_TIMEOUT_SECONDS, plus slack
BOUND = 3 * TIMEOUT + 2.0


def _raw_count(target: DatabaseTarget) -> int:
    with psycopg.connect(target.url) as conn:
        row = conn.execute("select count(*) from ingest.raw_record").fetchone()
        assert row is not None
        return row[0]


def _timed(call):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


@pytest.mark.timeout(60)
def test_locked_ledger_answers_503_in_bounded_time_and_readyz_recovers(fresh_db: DatabaseTarget) -> None:
    settings = make_settings(fresh_db, request_timeout_seconds=TIMEOUT, pool_max_size=2, writers=2)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        locker = psycopg.connect(fresh_db.url)
        try:
            locker.execute("lock table ingest.raw_record in access exclusive mode")
            single, elapsed = _timed(lambda: client.post("/ingest", json=telemetry(device_id=1)))
            assert single.status_code == 503
            assert elapsed < BOUND
            assert single.headers["retry-after"] == "1"
            body = single.json()
            assert (body["status"], body["reason"], body["stored"]) == ("error", "database_unavailable", False)

            # more requests than connections: the pool is exhausted too, and still nobody hangs
            with ThreadPoolExecutor(8) as pool:
                answers = list(
                    pool.map(
                        lambda i: _timed(lambda: client.post("/ingest", json=[telemetry(device_id=i + 2)])), range(8)
                    )
                )
            assert [r.status_code for r, _ in answers] == [503] * 8
            assert max(t for _, t in answers) < BOUND
            assert all(r.headers["retry-after"] == "1" for r, _ in answers)

            ready, elapsed = _timed(lambda: client.get("/readyz"))
            assert ready.status_code == 503
            assert ready.json()["status"] == "unready"
            assert elapsed < BOUND
            assert client.get("/healthz").status_code == 200  # alive, only not ready
        finally:
            locker.rollback()
            locker.close()
        assert client.get("/readyz").status_code == 200
        after = client.post("/ingest", json=telemetry(device_id=1))
        assert after.status_code == 200
    assert _raw_count(fresh_db) == 1  # the refused requests stored nothing
