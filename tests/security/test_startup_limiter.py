"""The failed-startup limiter counts in PostgreSQL: one limit for every worker and host, exact under
concurrent guesses (against `iot-platform serve --workers 2`, over real sockets), and no flood of
other serials can evict a lockout."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.database import DatabaseTarget
from ingest_service.main import create_app
from tests.ingest_service.conftest import SECRET, make_settings
from tests.utils.events import startup
from tests.utils.processes import running_api

LIMIT = 3
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def two_workers(module_db: DatabaseTarget) -> Iterator[str]:
    env = {"FAILED_STARTUPS_PER_SERIAL": str(LIMIT), "FAILED_STARTUP_WINDOW_SECONDS": "600"}
    with running_api(module_db, SECRET, workers=2, **env) as url:
        yield url


def _post(url: str, body: object) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as one_shot:  # a new connection: either worker may take it
        return one_shot.post("/ingest", content=orjson.dumps(body), headers={"content-type": "application/json"})


def _failures(target: DatabaseTarget, serial: str) -> int:
    with psycopg.connect(target.url) as conn:
        row = conn.execute("select count(*) from ingest.startup_failure where serial = %s", (serial,)).fetchone()
        assert row is not None
        return row[0]


def test_lockout_holds_across_two_workers(two_workers: str, module_db: DatabaseTarget) -> None:
    for _ in range(LIMIT):
        assert _post(two_workers, startup("guess", "SN-W2")).status_code == 401
    # Fresh connections land on both workers: each one refuses, even the valid token.
    answers = [_post(two_workers, startup(SECRET, "SN-W2")) for _ in range(12)]
    assert [a.status_code for a in answers] == [429] * 12
    assert {a.json()["reason"] for a in answers} == {"too_many_failed_startups"}
    assert _failures(module_db, "SN-W2") == LIMIT
    assert _post(two_workers, startup(SECRET, "SN-W2-OTHER")).json()["status"] == "provisioned"


def test_concurrent_guesses_get_exactly_the_limit(two_workers: str, module_db: DatabaseTarget) -> None:
    """Startups of one serial are decided one transaction after another (an advisory lock per serial
    bucket): 24 simultaneous guesses over both workers fail exactly LIMIT times, the rest get 429."""
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: _post(two_workers, startup("guess", "SN-RACE")), range(24)))
    assert Counter(a.status_code for a in answers) == {401: LIMIT, 429: 24 - LIMIT}
    assert _failures(module_db, "SN-RACE") == LIMIT


def test_lockout_survives_a_flood_of_random_serials(fresh_db: DatabaseTarget) -> None:
    """Regression (issue 13): 10 x 10,000 bad-token startups for random serials evicted a locked serial
    from the in-process limiter's 100,000 entries, and its lockout ended early. One worker, so the
    whole flood goes through one process."""
    settings = make_settings(fresh_db, failed_startups_per_serial=LIMIT, failed_startup_window_seconds=600)
    with TestClient(create_app(settings)) as client:
        for _ in range(LIMIT):
            assert client.post("/ingest", json=startup("guess", "SN-FLOODED")).status_code == 401
        assert client.post("/ingest", json=startup(SECRET, "SN-FLOODED")).status_code == 429
        now = time.time()
        for _ in range(10):
            batch = [startup("guess", f"SN-{secrets.token_hex(8)}", timestamp=now) for _ in range(10_000)]
            answer = client.post("/ingest", json=batch)
            assert answer.status_code == 200
            assert {r["reason"] for r in answer.json()} == {"invalid_token"}
        locked = client.post("/ingest", json=startup(SECRET, "SN-FLOODED"))
        assert (locked.status_code, locked.json()["reason"]) == (429, "too_many_failed_startups")
    with psycopg.connect(fresh_db.url) as conn:
        flood = conn.execute("select count(*) from ingest.startup_failure where serial like 'SN-________________'")
        assert flood.fetchone() == (100_000,)
