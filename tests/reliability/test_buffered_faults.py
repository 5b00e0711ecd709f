"""Buffered mode's faults, with real processes: PostgreSQL stopped for 30 s under full load (the API
keeps answering 202, the writers catch up), a writer SIGKILLed mid-group (redelivered, no doubles),
NATS restarted (503 while it is gone). Every acknowledged event ends in the ledger exactly once as
sent, with one outcome; facts are the distinct valid events, once each."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
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
from tests.utils.buffer import OwnedNats, Writer, buffer_env, line_results, wait_drained, wait_stored
from tests.utils.events import telemetry

pytestmark = pytest.mark.slow
OUTAGE_SECONDS = 30.0


def _stream_until(pipe: subprocess.Popen, err: Path, answered: int) -> None:
    reached = wait_for(lambda: count_results(err) >= answered or pipe.poll() is not None, 120, interval=0.1)
    assert reached, "pipe_to_api made no progress"
    assert pipe.poll() is None, "the stream finished before the fault; raise the event count"


def _finish(pipe: subprocess.Popen, timeout: float = 300) -> dict:
    out, _ = pipe.communicate(timeout=timeout)
    assert pipe.returncode == 0, f"pipe_to_api exited {pipe.returncode}"
    return json.loads(out.decode().strip().splitlines()[-1])


def _no_doubles(conn: psycopg.Connection) -> None:
    """No request stored twice: one ledger row per (request id, batch index)."""
    doubled = conn.execute(
        "select request_id, count(*) from ingest.raw_record group by request_id"
        " having count(*) > count(distinct batch_index)"
    ).fetchall()
    assert doubled == [], f"buffered requests stored twice: {doubled[:5]}"


def _sum(writers: list[Writer], sample: str) -> float:
    return sum((w.metrics() or {}).get(sample, 0.0) for w in writers)


@pytest.mark.timeout(600)
def test_postgres_stopped_30s_under_full_load_loses_nothing(
    owned_pg: OwnedPostgres, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    url = owned_pg.url("iot_buffered_pg")
    events, err = tmp_path / "events.ndjson", tmp_path / "pipe.err"
    lines = generate_events(events, 60_000, seed=21)
    env = buffer_env(nats_url, prefix, REQUEST_TIMEOUT_SECONDS="2")
    api = Api(url, tmp_path / "api.log", env_overrides=env).start()
    writers = [Writer(api.env(), tmp_path / f"writer{i}.log").start() for i in range(2)]
    try:
        pipe = start_pipe(api.base + "/ingest", events, err, batch=100, concurrency=2)
        _stream_until(pipe, err, len(lines) // 10)
        owned_pg.stop("immediate")
        stopped = time.monotonic()
        before = count_results(err)
        # While PostgreSQL is down the API stays ready and keeps acknowledging (the stream holds
        # what it accepts): the pipe below gets no refusal at all.
        assert httpx.get(api.base + "/readyz", timeout=5).status_code == 200
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped)))
        during = count_results(err) - before
        print(f"\n{during} events accepted during the outage, pipe still running: {pipe.poll() is None}")
        owned_pg.start()
        summary = _finish(pipe)
        assert summary["undelivered"] == 0 and summary["retried"] == 0, summary  # never a refusal
        assert during > 0, "the API answered nothing while the database was down"
        resumed = time.monotonic()
        drained = wait_drained(api.base, 180)
        caught_up = time.monotonic() - resumed
        assert _sum(writers, "ingest_buffer_store_retries_total") > 0, "the writers never waited for the database"
        results = line_results(api.base, pipe_results(err))
        with connect(url, autocommit=True) as conn:
            _no_doubles(conn)
            counts = reconcile(conn, lines, results)
        assert counts["raw_rows"] == len(lines)  # no request stored twice
    finally:
        for writer in writers:
            writer.kill()
        api.kill()
    counts.update(
        accepted_while_down=during, caught_up_seconds=round(caught_up, 1), dead_letters=drained["dead_letters"]
    )
    print(f"\nFAULT buffered: PostgreSQL stopped {OUTAGE_SECONDS:.0f} s under load: {json.dumps(counts)}")


@pytest.mark.timeout(300)
def test_writer_sigkilled_mid_group_is_redelivered_without_doubles(
    fresh_db: DatabaseTarget, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    """A group the writer holds is half committed when it dies: the committed requests come back as
    redeliveries and are found stored; the others are stored by the next writer."""
    env = buffer_env(
        nats_url, prefix, INGEST_BUFFER_ACK_WAIT_SECONDS="3", INGEST_BUFFER_FETCHERS="1", REQUEST_TIMEOUT_SECONDS="30"
    )
    api = Api(fresh_db.url, tmp_path / "api.log", env_overrides=env).start()
    first = second = None
    locker = psycopg.connect(fresh_db.url)
    try:
        base = time.time() - 3600
        receipts = []
        with httpx.Client(base_url=api.base, timeout=10) as client:
            for i in range(60):
                device = 999 if i == 30 else 1 + i % 20  # one request for the device held below
                batch = [telemetry(device_id=device, value=i % 100, timestamp=base + i + k / 100) for k in range(10)]
                answer = client.post("/ingest", json=batch)
                assert answer.status_code == 202
                receipts.append(answer.json()["receipt"])
        # Hold device 999's row: the group that touches it waits, the others commit.
        with psycopg.connect(fresh_db.url, autocommit=True) as setup:
            setup.execute("insert into ingest.device (id, origin) values (999, 'legacy')")
        locker.execute("select 1 from ingest.device where id = 999 for update")
        first = Writer(api.env(), tmp_path / "writer1.log").start()
        with psycopg.connect(fresh_db.url, autocommit=True) as watch:

            def half_committed() -> bool:
                row = watch.execute(
                    """select (select count(*) from ingest.raw_record),
                              (select count(*) from pg_stat_activity
                               where application_name = 'jetstream_writer' and wait_event_type = 'Lock')"""
                ).fetchone()
                return row is not None and row[0] > 0 and row[1] > 0

            assert wait_for(half_committed, 30), "the writer never reached the held device"
            committed = watch.execute("select count(distinct request_id) from ingest.raw_record").fetchone()[0]
        # Groups before the held one were committed and acknowledged; the held group's committed
        # requests are not (a fetch is acknowledged once all its writes returned).
        acknowledged = (first.metrics() or {}).get("ingest_buffer_messages_total{outcome=stored}", 0.0)
        unacknowledged = committed - acknowledged
        first.kill()  # SIGKILL: none of its group was acknowledged
        locker.rollback()
        second = Writer(api.env(), tmp_path / "writer2.log").start()
        wait_drained(api.base, 60)
        results = [wait_stored(api.base, r) for r in receipts]
        metrics = second.metrics() or {}
    finally:
        locker.close()
        for writer in (first, second):
            if writer is not None:
                writer.kill()
        api.kill()
    assert metrics["ingest_buffer_redeliveries_total"] >= unacknowledged
    # every request the first writer committed and did not acknowledge came back and was answered
    # from the ledger (its delivery key): no second row
    assert metrics["ingest_buffer_messages_total{outcome=already_stored}"] >= unacknowledged > 0
    assert all(r["status"] == "ok" for batch in results for r in batch)
    with psycopg.connect(fresh_db.url) as conn:
        _no_doubles(conn)
        assert conn.execute("select count(*) from ingest.raw_record").fetchone() == (600,)
        assert conn.execute("select count(*) from ingest.processed_record").fetchone() == (600,)
    print(f"\nFAULT buffered: writer SIGKILLed with {unacknowledged:.0f} of 60 requests committed, unacknowledged")


@pytest.mark.timeout(420)
def test_nats_restart_answers_503_while_gone_and_loses_nothing(
    fresh_db: DatabaseTarget, tmp_path: Path, prefix: str
) -> None:
    """A nats-server of the test's own (never the machine's shared one), stopped and started again on
    the same port and store directory mid-stream."""
    server = OwnedNats(tmp_path / "js").start()
    events, err = tmp_path / "events.ndjson", tmp_path / "pipe.err"
    lines = generate_events(events, 24_000, seed=23)
    env = buffer_env(server.url, prefix, INGEST_BUFFER_ACK_WAIT_SECONDS="5")
    api = writer = None
    try:
        api = Api(fresh_db.url, tmp_path / "api.log", env_overrides=env).start()
        writer = Writer(api.env(), tmp_path / "writer.log").start()
        pipe = start_pipe(api.base + "/ingest", events, err, batch=100, concurrency=4)
        _stream_until(pipe, err, len(lines) // 5)
        server.stop()
        gone = httpx.post(api.base + "/ingest", json=telemetry(device_id=78), timeout=10)
        assert (gone.status_code, gone.json()["reason"], gone.json()["stored"]) == (503, "buffer_unavailable", False)
        assert gone.headers["retry-after"] == "1"
        assert httpx.get(api.base + "/readyz", timeout=10).status_code == 503
        time.sleep(3)
        server.start()
        summary = _finish(pipe)
        assert summary["undelivered"] == 0
        assert summary["retried"] > 0, "the restart was not noticed: no request was refused"
        wait_drained(api.base, 180)
        results = line_results(api.base, pipe_results(err))
        with connect(fresh_db.url, autocommit=True) as conn:
            _no_doubles(conn)
            counts = reconcile(conn, lines, results)
    finally:
        if writer is not None:
            writer.kill()
        if api is not None:
            api.kill()
        server.stop()
    counts.update(retried_requests=summary["retried"], retried_events=summary["retried_events"])
    print(f"\nFAULT buffered: NATS restarted mid-stream: {json.dumps(counts)}")
