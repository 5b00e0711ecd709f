"""A PostgreSQL restart with a real server this module owns: while it is down every answer says so in
the product's words (the database's own text goes to the log with the request id); once it is back,
/readyz is ready within 2 s and the first request is served, by the ingest pool and the analytics
pool alike (their stale connections are noticed before use, not by a failed request)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from psycopg import sql

from ingest_service.analytics.reader import AnalyticsReader
from ingest_service.api.routes.ingest import DATABASE_UNAVAILABLE
from ingest_service.core import migrate
from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget
from tests.reliability.procs import Api, OwnedPostgres
from tests.utils.events import telemetry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
READY_WITHIN = 2.0
# What the database or libpq would say: none of it may reach a client.
INTERNALS = ("socket", "/tmp", "psycopg", "connection to server", "PGSQL", "postgres", "write_items", "FATAL")


def _ready_after(client: httpx.Client, limit: float = 30.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if client.get("/readyz").status_code == 200:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"/readyz not ready {limit:.0f} s after the database came back")


def test_outage_answers_in_product_words_and_the_api_recovers(owned_pg: OwnedPostgres, tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    api = Api(owned_pg.url("iot_restart"), log).start()
    try:
        client = httpx.Client(base_url=api.base, timeout=15)
        assert client.post("/ingest", json=telemetry(device_id=1, value=1)).status_code == 200

        owned_pg.stop("immediate")
        down = client.post("/ingest", json=telemetry(device_id=1, value=2))
        assert down.status_code == 503 and down.headers["retry-after"]
        body = down.json()
        assert (body["reason"], body["detail"], body["stored"]) == ("database_unavailable", DATABASE_UNAVAILABLE, False)
        unready = client.get("/readyz")
        assert unready.status_code == 503 and unready.json()["status"] == "unready"
        for text in (down.text, unready.text):
            assert not [word for word in INTERNALS if word.lower() in text.lower()], text
        # the database's own words are in the log, with the request id the client was given
        request_id = down.headers["x-request-id"]
        logged = [json.loads(line) for line in log.read_text().splitlines() if request_id in line]
        assert any("database unavailable" in entry["message"] and entry.get("error") for entry in logged)

        # a few seconds down with readiness probes knocking (reconnect attempts fail meanwhile)
        for _ in range(10):
            assert client.get("/readyz").status_code == 503
            time.sleep(0.3)
        owned_pg.start()
        ready_after = _ready_after(client)
        assert ready_after < READY_WITHIN, f"ready {ready_after:.2f} s after the database's return"
        assert client.post("/ingest", json=telemetry(device_id=1, value=3)).status_code == 200

        # a quiet restart: nothing asks while it is down; the first request after it is served
        owned_pg.restart_immediate()
        first = client.post("/ingest", json=telemetry(device_id=1, value=4))
        assert first.status_code == 200, first.text
        assert _ready_after(client) < READY_WITHIN
        print(f"\nDB restart: /readyz ready {ready_after:.2f} s after the database's return; first request served")
    finally:
        api.kill()


def test_the_analytics_pool_serves_the_first_query_after_a_restart(owned_pg: OwnedPostgres) -> None:
    url = owned_pg.url("iot_restart_analytics")
    migrate.upgrade(DatabaseTarget(url, embedded=False))  # the analyst role and schema come with it
    settings = Settings(dev_mode=True, database_url=url, _env_file=None)  # type: ignore[call-arg]
    query = sql.SQL("select 1 as one")

    async def scenario() -> list[list[dict]]:
        reader = AnalyticsReader(settings, url)
        await reader.open()
        try:
            before = await reader.fetch(query, reads="one")
            await reader.fetch(query, reads="one")  # a second connection may be in the pool too
            await asyncio.to_thread(owned_pg.restart_immediate)
            after = await reader.fetch(query, reads="one")  # raises AnalyticsUnavailable on a stale connection
            return [before, after]
        finally:
            await reader.close()

    before, after = asyncio.run(scenario())
    assert before == after == [{"one": 1}]
