"""Buffered mode with real processes: `iot-platform serve` publishing to the machine's JetStream and
`iot-platform writer` storing into a real PostgreSQL. A batch answers 202 with a receipt, the
receipt resolves to the same results as direct mode gives, limits still refuse before anything is
accepted, and a request no writer can store ends in the dead-letter stream, never lost."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest_service.core.config import PROJECT_ROOT
from ingest_service.core.database import DatabaseTarget
from platform_cli.processes import iot_platform
from tests.buffer.test_door import mixed_batch
from tests.reliability.ledger import assert_one_outcome_per_raw_row
from tests.reliability.procs import Api, wait_for
from tests.utils.buffer import Writer, buffer_env, receipt, wait_drained, wait_stored
from tests.utils.db import create_fresh_database, drop_database
from tests.utils.events import telemetry

pytestmark = pytest.mark.slow


@pytest.fixture
def buffered(fresh_db: DatabaseTarget, nats_url: str, prefix: str, tmp_path: Path) -> Iterator[tuple[Api, dict]]:
    """A buffered API (which created its stream at start); no writer yet."""
    env = buffer_env(nats_url, prefix, INGEST_BUFFER_ACK_WAIT_SECONDS="5")
    api = Api(fresh_db.url, tmp_path / "api.log", env_overrides=env).start()
    try:
        yield api, {**api.env()}
    finally:
        api.kill()


def _strip_ids(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("raw_id", "processed_id", "device_id")} for r in results]


def test_batch_answers_202_and_its_receipt_resolves_to_direct_mode_results(
    buffered: tuple[Api, dict], fresh_db: DatabaseTarget, pg_server: DatabaseTarget, tmp_path: Path
) -> None:
    api, env = buffered
    batch = mixed_batch()
    answer = httpx.post(api.base + "/ingest", json=batch, timeout=10)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "accepted" and body["items"] == len(batch)
    assert answer.headers["location"] == f"/ingest/receipts/{body['receipt']}"
    # nothing is stored before a writer runs; the receipt says so
    assert receipt(api.base, body["receipt"])["status"] == "accepted"
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from ingest.raw_record").fetchone() == (0,)

    writer = Writer(env, tmp_path / "writer.log").start()
    try:
        results = wait_stored(api.base, body["receipt"])
    finally:
        writer.stop()
    assert len(results) == len(batch)

    # The same batch through a direct-mode API on another database: the same answers.
    other = create_fresh_database(pg_server)
    try:
        direct = Api(other.url, tmp_path / "direct.log").start(migrate=False)
        try:
            expected = httpx.post(direct.base + "/ingest", json=batch, timeout=10).json()
        finally:
            direct.kill()
    finally:
        drop_database(pg_server, other.parts["dbname"])
    assert _strip_ids(results) == _strip_ids(expected)

    with psycopg.connect(fresh_db.url) as conn:
        raw_ids = [r[0] for r in conn.execute("select id from ingest.raw_record order by id").fetchall()]
        assert raw_ids == sorted(r["raw_id"] for r in results)
        assert_one_outcome_per_raw_row(conn)


def test_single_events_and_gzip_ndjson_are_stored_as_sent(buffered: tuple[Api, dict], fresh_db, tmp_path) -> None:
    api, env = buffered
    single = httpx.post(api.base + "/ingest", json=telemetry(device_id=11, value=3), timeout=10)
    lines = b'{"device_id": 12, "event_type": "platform_extension_mm", "value": -2, "timestamp": 1.7e9}\nnope\n'
    ndjson = httpx.post(
        api.base + "/ingest",
        content=gzip.compress(lines),
        headers={"content-type": "application/x-ndjson", "content-encoding": "gzip"},
        timeout=10,
    )
    assert single.status_code == ndjson.status_code == 202
    assert single.json()["items"] == 1 and ndjson.json()["items"] == 2
    writer = Writer(env, tmp_path / "writer.log").start()
    try:
        [one] = wait_stored(api.base, single.json()["receipt"])
        two = wait_stored(api.base, ndjson.json()["receipt"])
    finally:
        writer.stop()
    assert one["status"] == "ok"
    assert [r["status"] for r in two] == ["ok", "invalid"] and two[1]["reason"] == "invalid_json"
    with psycopg.connect(fresh_db.url) as conn:
        rows = conn.execute(
            "select payload, body_text, content_type, content_encoding from ingest.raw_record where id = any(%s)"
            " order by id",
            ([r["raw_id"] for r in two],),
        ).fetchall()
    assert rows[0][0]["device_id"] == 12 and rows[1][1] == "nope"
    assert {(r[2], r[3]) for r in rows} == {("application/x-ndjson", "gzip")}


def test_limits_refuse_before_anything_is_accepted(buffered: tuple[Api, dict], nats_url: str, prefix: str) -> None:
    api, _ = buffered
    too_many = httpx.post(api.base + "/ingest", json=[telemetry()] * 10_001, timeout=30)
    assert (too_many.status_code, too_many.json()["reason"]) == (413, "too_many_items")
    corrupt = httpx.post(
        api.base + "/ingest", content=b"\x1f\x8b\x08garbage", headers={"content-encoding": "gzip"}, timeout=10
    )
    assert (corrupt.status_code, corrupt.json()["reason"]) == (400, "invalid_gzip")
    # a body the NATS server's max_payload (1 MB) cannot carry: refused, the client splits it
    big = orjson.dumps([telemetry(device_id=i, note="x" * 200) for i in range(1, 5000)])
    assert len(big) > 1024**2
    over = httpx.post(api.base + "/ingest", content=big, headers={"content-type": "application/json"}, timeout=30)
    assert (over.status_code, over.json()["reason"], over.json()["stored"]) == (413, "body_too_large", False)
    for unknown in ("nonsense", "js-" + "0" * 32 + "-1"):
        missing = httpx.get(f"{api.base}/ingest/receipts/{unknown}", timeout=5)
        assert (missing.status_code, missing.json()["reason"]) == (404, "unknown_receipt")
    assert _stream_messages(nats_url, prefix.upper()) == 0, "a refused body reached the stream"


def test_readyz_and_metrics_report_the_backlog(buffered: tuple[Api, dict], tmp_path: Path) -> None:
    api, env = buffered
    for _ in range(3):
        assert httpx.post(api.base + "/ingest", json=[telemetry(), telemetry()], timeout=10).status_code == 202
    ready = httpx.get(api.base + "/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["buffer"]["lag"] == ready.json()["buffer"]["pending"] == 3
    metrics = _metrics(api.base)
    assert metrics["ingest_buffer_lag_messages"] == 3 and metrics["ingest_buffer_up"] == 1
    assert metrics["ingest_buffer_dead_letter_messages"] == 0
    writer = Writer(env, tmp_path / "writer.log").start()
    try:
        assert wait_drained(api.base, 30)["lag"] == 0
        assert wait_for(lambda: (writer.metrics() or {}).get("ingest_buffer_messages_total{outcome=stored}") == 3, 10)
        assert (writer.metrics() or {})["ingest_items_total{reason=,status=ok}"] == 6
    finally:
        writer.stop()


def test_a_request_no_writer_can_store_is_dead_lettered_with_its_reason(
    buffered: tuple[Api, dict], tmp_path: Path
) -> None:
    api, env = buffered
    accepted = httpx.post(api.base + "/ingest", json=[telemetry(device_id=i) for i in range(1, 4)], timeout=10)
    assert accepted.status_code == 202
    # a writer configured with a smaller batch limit than the API that accepted the request
    writer = Writer({**env, "MAX_BATCH_ITEMS": "2"}, tmp_path / "writer.log").start()
    try:
        deadline = time.monotonic() + 30
        while (state := receipt(api.base, accepted.json()["receipt"]))["status"] == "accepted":
            assert time.monotonic() < deadline, "never dead-lettered"
            time.sleep(0.1)
    finally:
        writer.stop()
    assert state["status"] == "dead_lettered" and state["reason"] == "too_many_items"
    assert _metrics(api.base)["ingest_buffer_dead_letter_messages"] == 1
    assert httpx.get(api.base + "/readyz", timeout=5).json()["buffer"]["dead_letters"] == 1


def test_a_redelivered_stored_request_adds_no_row(
    fresh_db: DatabaseTarget, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    """The same message in the stream twice (a redelivery after a lost acknowledgement looks like this
    to a writer): stored once, acknowledged twice."""
    # limits retention: the stored message stays in the stream, to be published again below
    env = buffer_env(nats_url, prefix, INGEST_BUFFER_DUPLICATE_WINDOW_SECONDS="1", INGEST_BUFFER_RETENTION="limits")
    api = Api(fresh_db.url, tmp_path / "api.log", env_overrides=env).start()
    writer = None
    try:
        first = httpx.post(api.base + "/ingest", json=[telemetry(device_id=21), {"device_id": 21}], timeout=10)
        writer = Writer(api.env(), tmp_path / "writer.log").start()
        results = wait_stored(api.base, first.json()["receipt"])
        seq = int(first.json()["receipt"].rsplit("-", 1)[1])
        time.sleep(1.5)  # past the stream's duplicate window: the copy is stored as a new message
        _republish(nats_url, prefix, seq)
        wait_drained(api.base, 30)
        assert wait_for(
            lambda: (writer.metrics() or {}).get("ingest_buffer_messages_total{outcome=already_stored}") == 1, 10
        )
        assert wait_stored(api.base, first.json()["receipt"]) == results
    finally:
        if writer is not None:
            writer.stop()
        api.kill()
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from ingest.raw_record").fetchone() == (2,)
        assert conn.execute("select count(*) from ingest.processed_record").fetchone() == (1,)


def test_stream_missing_or_full_answers_503(fresh_db: DatabaseTarget, nats_url: str, prefix: str, tmp_path) -> None:
    env = buffer_env(nats_url, prefix, INGEST_BUFFER_MAX_BYTES="2048")
    api = Api(fresh_db.url, tmp_path / "api.log", env_overrides=env)
    api.start(migrate=False, until="/healthz")  # --no-migrate: nobody created the stream yet, never ready
    try:
        missing = httpx.post(api.base + "/ingest", json=telemetry(), timeout=10)
        assert (missing.status_code, missing.json()["reason"]) == (503, "buffer_unavailable")
        assert missing.headers["retry-after"] == "1"
        assert httpx.get(api.base + "/readyz", timeout=5).status_code == 503
        _ensure(api.env())
        answers = [httpx.post(api.base + "/ingest", json=telemetry(device_id=1 + i), timeout=10) for i in range(20)]
        assert answers[0].status_code == 202
        full = answers[-1]
        assert (full.status_code, full.json()["reason"], full.json()["stored"]) == (503, "buffer_full", False)
        assert "Traceback" not in (tmp_path / "api.log").read_text()
    finally:
        api.kill()


# ------------------------------------------------------------------------------------------------


def _metrics(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics", timeout=5).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def _stream_messages(nats_url: str, stream: str) -> int:
    async def run() -> int:
        nc = await nats.connect(nats_url)
        try:
            return (await nc.jetstream().stream_info(stream)).state.messages
        finally:
            await nc.close()

    return asyncio.run(run())


def _republish(nats_url: str, prefix: str, seq: int) -> None:
    """Publish a stored message again, as it was (same Nats-Msg-Id, same headers and body)."""

    async def run() -> None:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            original = await js.get_msg(prefix.upper(), seq)
            await js.publish(original.subject, original.data, headers=dict(original.headers or {}))
        finally:
            await nc.close()

    asyncio.run(run())


def _ensure(env: dict[str, str]) -> None:
    """`iot-platform migrate` in buffered mode: creates the streams and the consumer."""
    subprocess.run(iot_platform("migrate"), cwd=PROJECT_ROOT, env=env, check=True, timeout=60)


def test_a_retry_with_the_same_idempotency_key_stores_nothing_twice(
    fresh_db: DatabaseTarget, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    """Buffered mode honours Idempotency-Key: a retry within the stream's duplicate window gets the
    first receipt; one after it is stored under the same delivery key, so the writer answers it
    from the ledger; the key with another body is dead-lettered (`idempotency_key_reused`)."""
    env = buffer_env(nats_url, prefix, INGEST_BUFFER_DUPLICATE_WINDOW_SECONDS="1")
    api = Api(fresh_db.url, tmp_path / "api.log", env_overrides=env).start()
    writer = None
    batch = [telemetry(device_id=22), {"device_id": 22}]
    key = {"Idempotency-Key": "retry-me-1"}
    try:
        first = httpx.post(api.base + "/ingest", json=batch, headers=key, timeout=10)
        again = httpx.post(api.base + "/ingest", json=batch, headers=key, timeout=10)
        assert first.status_code == again.status_code == 202
        assert again.json()["receipt"] == first.json()["receipt"]  # the stream dropped the copy
        writer = Writer(api.env(), tmp_path / "writer.log").start()
        results = wait_stored(api.base, first.json()["receipt"])
        time.sleep(1.5)  # past the stream's duplicate window: a retry is a new message
        late = httpx.post(api.base + "/ingest", json=batch, headers=key, timeout=10)
        assert late.status_code == 202 and late.json()["receipt"] != first.json()["receipt"]
        assert wait_stored(api.base, late.json()["receipt"]) == results
        assert wait_for(
            lambda: (writer.metrics() or {}).get("ingest_buffer_messages_total{outcome=already_stored}") == 1, 10
        )
        time.sleep(1.5)
        other = httpx.post(api.base + "/ingest", json=[telemetry(device_id=23)], headers=key, timeout=10)
        assert other.status_code == 202
        # its receipt names the key's request id, which resolves to the first body's results (a known
        # limit, docs/scaling.md); the message itself is dead-lettered with its reason
        assert wait_for(lambda: _metrics(api.base).get("ingest_buffer_dead_letter_messages") == 1, 30)
        assert (writer.metrics() or {}).get("ingest_buffer_messages_total{outcome=dead_lettered}") == 1
    finally:
        if writer is not None:
            writer.stop()
        api.kill()
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select count(*) from ingest.raw_record").fetchone() == (2,)
        assert conn.execute("select count(*) from ingest.processed_record").fetchone() == (1,)
