"""Replay (issue 16): rejected ledger rows decided again with today's catalog, through the write
path's own stages; outcomes superseded, never rewritten; idempotent; resumable; safe beside live
ingest. Real PostgreSQL, the real API (TestClient, or a process for the concurrent test)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget
from ingest_service.lifecycle import replay
from ingest_service.main import create_app
from platform_cli.main import main
from tests.ingest_service.conftest import SECRET, make_settings
from tests.utils.events import startup, telemetry
from tests.utils.ledger import assert_one_outcome_per_raw_row, ledger
from tests.utils.processes import running_api

NEW_TYPE = "platform_tilt_deg"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def client(fresh_db: DatabaseTarget) -> Iterator[TestClient]:
    # The catalog read for every request: a type inserted by the test is known to the next one.
    with TestClient(create_app(make_settings(fresh_db, record_type_refresh_seconds=0))) as test_client:
        yield test_client


@pytest.fixture
def db(fresh_db: DatabaseTarget) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db.url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def cli_db(fresh_db: DatabaseTarget, monkeypatch: pytest.MonkeyPatch) -> DatabaseTarget:
    """`iot-platform` commands run against the test database."""
    monkeypatch.setenv("DATABASE_URL", fresh_db.url)
    return fresh_db


def add_type(db: psycopg.Connection, name: str = NEW_TYPE, lo: float = -90, hi: float = 90, type_id: int = 50) -> None:
    db.execute(
        "insert into ingest.record_type (id, name, unit, min_value, max_value, payload_format, measure)"
        " values (%s, %s, 'deg', %s, %s, 'common', 'tilt')",
        (type_id, name, lo, hi),
    )


def post(client: TestClient, events: list[dict[str, Any]], **headers: str) -> list[dict[str, Any]]:
    response = client.post("/ingest", json=events, headers=headers)
    assert response.status_code in (200, 207), response.text
    return response.json()["results"] if isinstance(response.json(), dict) else response.json()


def tilt(n: int, device_id: int = 7, value: float = 1.5, **extra: Any) -> list[dict[str, Any]]:
    return [telemetry(device_id, NEW_TYPE, value, T0 + i, **extra) for i in range(n)]


def counts(db: psycopg.Connection) -> dict[str, int]:
    row = db.execute(
        """select (select count(*) from ingest.raw_record), (select count(*) from ingest.processed_record),
                  (select count(*) from ingest.raw_duplicate), (select count(*) from ingest.ingest_error),
                  (select count(*) from ingest.replay_error), (select count(*) from ingest.outcome_supersession)"""
    ).fetchone()
    assert row is not None
    names = ["raw", "facts", "duplicates", "ingest_errors", "replay_errors", "supersessions"]
    return dict(zip(names, row, strict=True))


def current_reasons(db: psycopg.Connection) -> dict[str, int]:
    return dict(db.execute("select reason, count(*) from ingest.current_ingest_error group by 1").fetchall())


def test_unknown_type_then_inserted_then_replay_makes_200_facts_and_again_nothing(
    client: TestClient, db: psycopg.Connection, cli_db: DatabaseTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    results = post(client, tilt(200))
    assert {r["reason"] for r in results} == {"unknown_event_type"}
    before = counts(db)
    add_type(db)

    assert main(["replay", "--reason", "unknown_event_type", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "changed 200 of 200 rows" in out and "rows/s" in out and "remaining" in out
    after = counts(db)
    assert after["raw"] == before["raw"] == 200  # the ledger is never written
    assert after["facts"] == 200 and after["ingest_errors"] == 200  # the old outcome rows stay
    assert after["supersessions"] == 200
    assert current_reasons(db) == {}
    assert assert_one_outcome_per_raw_row(db).facts == 200
    run_row = db.execute(
        "select status, requested_by, selection->'reasons', selected, facts, finished_at is not null"
        " from ingest.replay_run"
    ).fetchone()
    assert run_row is not None
    assert run_row[0] == "finished" and "iot-platform replay" in run_row[1]
    assert run_row[2:] == (["unknown_event_type"], 200, 200, True)
    # A fact of a replayed row is the event's: device, type, time and value.
    fact = db.execute(
        "select p.device_id, t.name, extract(epoch from p.record_time), p.value from ingest.processed_record p"
        " join ingest.record_type t on t.id = p.record_type_id order by p.raw_record_id limit 1"
    ).fetchone()
    assert fact == (7, NEW_TYPE, T0, 1.5)

    assert main(["replay", "--reason", "unknown_event_type"]) == 0
    assert "changed 0 of 0 rows" in capsys.readouterr().out
    assert counts(db) == after


def test_dry_run_prints_changes_by_reason_and_writes_nothing(
    client: TestClient, db: psycopg.Connection, cli_db: DatabaseTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    post(client, [*tilt(3), telemetry(1, "platform_height_mm", 500, T0), telemetry(1, "platform_height_mm", 900, T0)])
    add_type(db)
    db.execute("update ingest.record_type set max_value = 600 where name = 'platform_height_mm'")
    before = counts(db)
    assert main(["replay", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out and "would change 4 of 5 rows" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("unknown", "value"))}
    assert lines["unknown_event_type"][:5] == ["3", "3", "0", "0", "0"]  # rows, fact, dupl., unchanged, skipped
    assert lines["value_out_of_range"][:5] == ["2", "1", "0", "1", "0"]
    assert counts(db) == before
    assert db.execute("select count(*) from ingest.replay_run").fetchone() == (0,)
    # --json (the Dagster job's reading): one JSON object on stdout, the same counts.
    assert main(["replay", "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["dry_run"], data["run_id"], data["selected"], data["facts"]) == (True, None, 5, 4)
    assert data["by_reason"]["value_out_of_range"]["unchanged"] == 1


def test_still_failing_rows_keep_an_error_whose_reason_may_change(client: TestClient, db: psycopg.Connection) -> None:
    post(client, [*tilt(2, value=120.0), telemetry(1, "no_such_type", 1, T0)])
    add_type(db, hi=90)  # the new type's range excludes 120
    first = run_on(db, replay.Selection())
    assert first.tally.by_reason["unknown_event_type"] == {"error:value_out_of_range": 2, "unchanged": 1}
    assert current_reasons(db) == {"value_out_of_range": 2, "unknown_event_type": 1}
    c = counts(db)
    assert (c["ingest_errors"], c["replay_errors"], c["supersessions"], c["facts"]) == (3, 2, 2, 0)
    assert_one_outcome_per_raw_row(db)

    db.execute(f"update ingest.record_type set max_value = 150 where name = '{NEW_TYPE}'")
    second = run_on(db, replay.Selection())
    assert second.tally.by_reason["value_out_of_range"] == {"fact": 2}
    assert current_reasons(db) == {"unknown_event_type": 1}
    # The history: live ingest's error, superseded by run 1's error, superseded by run 2's fact.
    history = db.execute(
        "select superseded_replay_run_id, replay_run_id, superseded_reason, outcome from ingest.outcome_supersession"
        " order by raw_record_id, replay_run_id"
    ).fetchall()
    steps = [
        (None, first.run_id, "unknown_event_type", "error"),
        (first.run_id, second.run_id, "value_out_of_range", "fact"),
    ]
    assert history == steps * 2
    assert_one_outcome_per_raw_row(db)


def test_duplicates_stay_duplicates(client: TestClient, db: psycopg.Connection) -> None:
    add_type(db, name="tilt_known", type_id=51)
    post(client, [telemetry(3, "tilt_known", 2.0, T0), telemetry(3, "tilt_known", 2.0, T0)])  # a fact and its duplicate
    # Three rejected events: two the same, and one repeating a fact stored since (below).
    post(client, [*tilt(1, device_id=3, value=5.0), *tilt(1, device_id=3, value=5.0), *tilt(1, device_id=4, value=6.0)])
    add_type(db)
    post(client, tilt(1, device_id=4, value=6.0))  # now a fact of live ingest
    result = run_on(db, replay.Selection())
    assert result.tally.by_reason == {"unknown_event_type": {"fact": 1, "duplicate": 2}}
    c = counts(db)
    assert (c["facts"], c["duplicates"]) == (3, 3)
    assert_one_outcome_per_raw_row(db)


def test_selection_filters_reason_device_event_type_and_time(client: TestClient, db: psycopg.Connection) -> None:
    post(client, [*tilt(2, device_id=1), *tilt(2, device_id=2), telemetry(1, "other_new", 1, T0)])
    add_type(db)
    add_type(db, name="other_new", type_id=52)
    received = [r[0] for r in db.execute("select received_at from ingest.raw_record order by id")]

    def facts(selection: replay.Selection) -> int:
        return run_on(db, selection).tally.total("fact")

    assert facts(replay.Selection(reasons=("value_out_of_range",))) == 0
    assert facts(replay.Selection(device_ids=(2,), event_types=(NEW_TYPE,))) == 2
    assert facts(replay.Selection(until=received[0])) == 0  # received before the first row: none
    assert facts(replay.Selection(event_types=("other_new",), since=received[0])) == 1
    assert facts(replay.Selection()) == 2
    assert current_reasons(db) == {}


def run_on(db: psycopg.Connection, selection: replay.Selection, **kwargs: Any) -> replay.ReplayResult:
    return replay.run(db.info.dsn, Settings(dev_mode=True), selection, requested_by="t", out=lambda _: None, **kwargs)


def test_an_interrupted_replay_resumes_without_redoing_work(client: TestClient, db: psycopg.Connection) -> None:
    post(client, tilt(50))
    add_type(db)

    class Interrupted(Exception):
        pass

    def stop_after_two_batches(progress: replay.Progress) -> None:
        if progress.done >= 20:
            raise Interrupted

    async def interrupted() -> None:
        async with await psycopg.AsyncConnection.connect(db.info.dsn, autocommit=True) as conn:
            await replay.replay(
                conn,
                Settings(dev_mode=True),
                replay.Selection(reasons=("unknown_event_type",)),
                requested_by="t",
                batch_size=10,
                progress=stop_after_two_batches,
            )

    with pytest.raises(Interrupted):
        asyncio.run(interrupted())
    run_row = db.execute("select id, status, last_raw_record_id, facts from ingest.replay_run").fetchone()
    assert run_row is not None
    run_id, status, last, done = run_row
    first_raw = db.execute("select min(id) from ingest.raw_record").fetchone()
    assert first_raw is not None
    assert (status, last, done) == ("running", first_raw[0] + 19, 20)

    resumed = run_on(db, replay.Selection(), resume=run_id)
    assert resumed.run_id == run_id and resumed.tally.counts()["selected"] == 30  # only what was left
    assert resumed.selection.reasons == ("unknown_event_type",)  # the run's own selection
    row = db.execute("select status, selected, facts from ingest.replay_run where id = %s", (run_id,)).fetchone()
    assert row == ("finished", 50, 50)
    assert counts(db)["facts"] == 50 and counts(db)["supersessions"] == 50
    with pytest.raises(replay.ReplayError, match="finished"):
        run_on(db, replay.Selection(), resume=run_id)


def test_what_is_never_replayed(
    client: TestClient, db: psycopg.Connection, cli_db: DatabaseTarget, capsys: pytest.CaptureFixture[str]
) -> None:
    client.post("/ingest", content=b"{not json", headers={"Content-Type": "application/json"})
    post(client, [startup("wrong-secret", "SN-1"), {**startup(SECRET, "SN-2"), "timestamp": T0}])
    assert current_reasons(db) == {"invalid_json": 1, "invalid_token": 1, "stale_startup": 1}
    assert main(["replay", "--reason", "invalid_json"]) == 2
    assert "never replayed" in capsys.readouterr().err
    assert main(["replay", "--reason", "no_such_reason"]) == 2
    result = run_on(db, replay.Selection())
    assert result.tally.total() == 0  # startups are decided at receipt: their token and age
    assert db.execute("select count(*) from ingest.startup_failure").fetchone() == (2,)
    assert current_reasons(db) == {"invalid_json": 1, "invalid_token": 1, "stale_startup": 1}


def test_one_replay_at_a_time(db: psycopg.Connection) -> None:
    with psycopg.connect(db.info.dsn, autocommit=True) as other:
        other.execute("select pg_advisory_lock(%s, %s)", replay.REPLAY_LOCK)
        with pytest.raises(replay.ReplayError, match="another replay is running"):
            run_on(db, replay.Selection())
    assert run_on(db, replay.Selection()).tally.total() == 0


def test_a_repeated_delivery_key_is_answered_with_the_current_outcome(
    client: TestClient, db: psycopg.Connection
) -> None:
    first = post(client, tilt(1), **{"Idempotency-Key": "k-1"})
    assert first[0]["reason"] == "unknown_event_type"
    add_type(db)
    run_on(db, replay.Selection())
    again = client.post("/ingest", json=tilt(1), headers={"Idempotency-Key": "k-1"})
    body = again.json()
    results = body["results"] if isinstance(body, dict) else body
    assert results[0]["status"] == "ok" and results[0]["raw_id"] == first[0]["raw_id"]
    assert counts(db)["raw"] == 1


def test_the_ledger_check_fails_on_a_fact_beside_a_current_error(client: TestClient, db: psycopg.Connection) -> None:
    """The accounting is real: an outcome added without superseding the error is two outcomes."""
    post(client, tilt(1))
    add_type(db)
    raw_id = db.execute("select id from ingest.raw_record").fetchone()
    assert raw_id is not None
    db.execute("insert into ingest.device (id, origin) values (7, 'legacy') on conflict do nothing")
    db.execute(
        "insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value)"
        " values (%s, 7, 50, now(), 1)",
        raw_id,
    )
    assert ledger(db).several_outcomes == 1


@pytest.mark.slow
def test_replay_beside_live_ingest_loses_and_doubles_nothing(fresh_db: DatabaseTarget) -> None:
    """A real API process ingests batches (new rows, some repeating the replayed events) while a
    replay runs: every raw row keeps exactly one current outcome, and every event is one fact."""
    api = running_api(fresh_db, SECRET, RECORD_TYPE_REFRESH_SECONDS="0")  # a type inserted is known at once
    with psycopg.connect(fresh_db.url, autocommit=True) as db, api as base:
        with httpx.Client(base_url=base, timeout=30) as http:
            for start in range(0, 2000, 500):  # 2,000 rejected rows to replay
                events = [telemetry(10 + i % 20, NEW_TYPE, 1.0, T0 + start + i) for i in range(500)]
                assert http.post("/ingest", json=events).status_code in (200, 207)
            add_type(db)
            sent = [0]
            stop = threading.Event()

            def live() -> None:  # repeats of the replayed events and new ones, until the replay ends
                i = 0
                while not stop.is_set():
                    batch = [telemetry(10 + (i + k) % 20, NEW_TYPE, 1.0, T0 + (i + k) % 4000) for k in range(100)]
                    assert http.post("/ingest", json=batch).status_code in (200, 207)
                    sent[0] += len(batch)
                    i += 100

            thread = threading.Thread(target=live)
            thread.start()
            try:
                result = run_on(db, replay.Selection(), batch_size=20)
            finally:
                stop.set()
                thread.join(60)
            assert sent[0] > 0
            assert result.tally.total() == 2000
            assert result.tally.total("fact") + result.tally.total("duplicate") == 2000
            accounts = assert_one_outcome_per_raw_row(db)
            assert accounts.raw_rows == 2000 + sent[0]
            # Every distinct event is one fact (4,000 at most: T0 + 0..3999), whoever wrote it.
            distinct = db.execute(
                "select count(distinct (device_id, record_time, value)), count(*) from ingest.processed_record"
            ).fetchone()
            assert distinct is not None and distinct[0] == distinct[1]
            assert accounts.errors == 0
