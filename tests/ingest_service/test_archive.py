"""Archive, then retain: a day's partitions go to Parquet with a manifest, are verified, dropped, and
come back row for row; a corrupted file stops the drop (and the restore)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ingest_service.core.database import DatabaseTarget
from ingest_service.lifecycle import archive, partitions
from tests.ingest_service.test_partitions import KEYS, TABLES, store
from tests.utils.events import telemetry

RETENTION = 30
OLD = partitions.today() - timedelta(days=RETENTION + 5)


def _ts(day: date, seconds: float) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() + seconds


def _rows_of_day(conn: psycopg.Connection, day: date) -> dict[str, list[tuple[Any, ...]]]:
    rows = {}
    for table in TABLES:
        name = f"{table}_p{day:%Y%m%d}"
        rows[table] = conn.execute(f"select * from ingest.{name} order by {KEYS[table]}").fetchall()
    return rows


@pytest.fixture
def old_day(fresh_db: DatabaseTarget, db: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """A day 35 days back with rows in each of its partitions (every column type), and rows today."""
    partitions.ensure(db, OLD, OLD)
    facts = store(fresh_db.url, [telemetry(device_id=9, value=v, timestamp=_ts(OLD, 60 + v)) for v in range(5)])
    store(fresh_db.url, [telemetry(device_id=9, value=1)])  # today: stays
    at = f"'{OLD.isoformat()} 12:00:00+00'"
    raw_ids = [
        row[0]
        for row in db.execute(
            "insert into ingest.raw_record (received_at, request_id, batch_index, content_type, content_encoding, "
            f"remote_addr, payload, body_text, body_bytes) values "
            f"({at}, 'r1', 0, 'application/json', 'gzip', '10.0.0.1', '{{\"a\": [1, 2.5, null]}}', null, null), "
            f"({at}, 'r1', 1, 'text/plain', null, null, null, 'tab\there', null), "
            f"({at}, 'r1', 2, 'application/octet-stream', null, null, null, null, '\\x00ff10'), "
            f"({at}, 'r1', 3, 'application/json', null, null, '{{}}', null, null) returning id"
        ).fetchall()
    ]
    db.execute(
        "insert into ingest.raw_duplicate (raw_record_id, processed_record_id, detected_at) values (%s, %s, "
        + at
        + ")",
        (raw_ids[0], facts[0].processed_id),
    )
    db.execute(
        "insert into ingest.ingest_error (raw_record_id, reason, detail, event_type, device_id, first_seen_at) "
        "values (%s, 'wrong_type', 'détail ü', null, 9, " + at + ")",
        (raw_ids[1],),
    )
    db.execute(
        "insert into ingest.device_startup (raw_record_id, device_id, serial, firmware, started_at, processed_at) "
        "values (%s, 9, 'SN-9', null, " + at + ", " + at + ")",
        (raw_ids[3],),
    )
    rows = _rows_of_day(db, OLD)
    assert all(rows[t] for t in TABLES)
    return rows


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(f"select count(*) from ingest.{table}").fetchone()
    assert row is not None
    return int(row[0])


def _day_partitions(conn: psycopg.Connection, day: date) -> set[str]:
    return {p.name for p in partitions.list_partitions(conn) if p.day == day}


def test_archive_verify_drop_restore_round_trip(
    db: psycopg.Connection, old_day: dict[str, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    url = str(tmp_path / "archive")
    facts_before = _count(db, "processed_record")
    assert archive.archive(db, url, retention_days=None) == []  # unset: keep everything

    (result,) = archive.archive(db, url, RETENTION)

    assert result.day == OLD and result.action == "archived"
    assert _day_partitions(db, OLD) == set()
    manifest = json.loads((tmp_path / "archive" / OLD.isoformat() / "manifest.json").read_text())
    entries = {f["table"]: f for f in manifest["files"]}
    assert {t: entries[t]["rows"] for t in TABLES} == {t: len(old_day[t]) for t in TABLES}
    assert entries["raw_record"]["id_min"] == old_day["raw_record"][0][0]
    assert entries["raw_record"]["id_max"] == old_day["raw_record"][-1][0]
    assert all(len(e["sha256"]) == 64 for e in entries.values())
    assert _count(db, "processed_record") == facts_before - len(old_day["processed_record"])
    assert archive.verify_archive(url)[0].day == OLD.isoformat()
    assert archive.archive(db, url, RETENTION) == []  # nothing left to do

    restored = archive.restore(db, url, OLD)
    assert restored.action == "restored"
    assert _rows_of_day(db, OLD) == old_day
    # The restored ledger partition is immutable again.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute(f"delete from ingest.raw_record_p{OLD:%Y%m%d}")
    with pytest.raises(archive.ArchiveError, match="exist already"):
        archive.restore(db, url, OLD)


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_archive_file_stops_the_drop(
    db: psycopg.Connection, old_day: dict[str, list[tuple[Any, ...]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "archive")
    export = archive.export_partition

    def export_then_corrupt(conn: psycopg.Connection, target: archive.Archive, partition: partitions.Partition) -> Any:
        entry = export(conn, target, partition)
        if partition.table == "processed_record":
            _corrupt(Path(target.path(OLD, entry.path)))  # between the write and the read-back
        return entry

    monkeypatch.setattr(archive, "export_partition", export_then_corrupt)
    with pytest.raises(archive.ArchiveError, match="processed_record.parquet: SHA-256"):
        archive.archive(db, url, RETENTION)
    assert _day_partitions(db, OLD) == {f"{t}_p{OLD:%Y%m%d}" for t in TABLES}
    assert _rows_of_day(db, OLD) == old_day


def test_a_corrupted_archive_file_stops_the_restore(
    db: psycopg.Connection, old_day: dict[str, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    url = str(tmp_path / "archive")
    archive.archive(db, url, RETENTION)
    _corrupt(tmp_path / "archive" / OLD.isoformat() / "ingest_error.parquet")
    with pytest.raises(archive.ArchiveError, match="ingest_error.parquet"):
        archive.restore(db, url, OLD)
    assert _day_partitions(db, OLD) == set()
    with pytest.raises(archive.ArchiveError, match="ingest_error.parquet"):
        archive.verify_archive(url)


def test_a_row_that_arrives_after_the_check_stops_the_drop(
    db: psycopg.Connection, old_day: dict[str, list[tuple[Any, ...]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A late fact routed to the day between the verification and the detach: the day is attached again."""
    verify = archive.verify_day

    def verify_then_insert(*args: Any) -> Any:
        manifest = verify(*args)
        db.execute(
            "insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value) "
            "values (1, 9, 2, %s, 77)",
            (datetime.fromtimestamp(_ts(OLD, 999), UTC),),
        )
        return manifest

    monkeypatch.setattr(archive, "verify_day", verify_then_insert)
    with pytest.raises(archive.ArchiveError, match="changed while being archived"):
        archive.archive(db, str(tmp_path / "archive"), RETENTION)
    assert _day_partitions(db, OLD) == {f"{t}_p{OLD:%Y%m%d}" for t in TABLES}
    assert len(_rows_of_day(db, OLD)["processed_record"]) == len(old_day["processed_record"]) + 1


def test_a_day_holding_a_superseded_error_archives_and_restores(
    db: psycopg.Connection, old_day: dict[str, list[tuple[Any, ...]]], tmp_path: Path
) -> None:
    """Replay's tables are not partitioned: archiving a day leaves its supersession and replay error
    behind, and after the restore they make the replay's error the row's current outcome again."""
    raw_id = old_day["ingest_error"][0][0]
    (run_id,) = db.execute(
        "insert into ingest.replay_run (requested_by, selection, upto_raw_record_id, status)"
        " values ('test', '{}', %s, 'finished') returning id",
        (raw_id,),
    ).fetchone() or (None,)
    db.execute(
        "insert into ingest.replay_error (raw_record_id, replay_run_id, reason, detail)"
        " values (%s, %s, 'x_reason', 'd')",
        (raw_id, run_id),
    )
    db.execute(
        "insert into ingest.outcome_supersession (raw_record_id, replay_run_id, superseded_reason, outcome)"
        " values (%s, %s, 'wrong_type', 'error')",
        (raw_id, run_id),
    )
    current = "select reason, replay_run_id from ingest.current_ingest_error where raw_record_id = %s"
    assert db.execute(current, (raw_id,)).fetchall() == [("x_reason", run_id)]
    url = str(tmp_path / "archive")

    (result,) = archive.archive(db, url, RETENTION)

    assert result.action == "archived" and _day_partitions(db, OLD) == set()
    assert db.execute(current, (raw_id,)).fetchall() == []  # the day's errors are in the archive
    assert _count(db, "outcome_supersession") == _count(db, "replay_error") == 1  # kept, not archived
    assert archive.restore(db, url, OLD).action == "restored"
    assert _rows_of_day(db, OLD) == old_day
    assert db.execute(current, (raw_id,)).fetchall() == [("x_reason", run_id)]
