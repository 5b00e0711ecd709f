"""Archive to an S3-compatible store: `iot-platform archive` and `restore` with ARCHIVE_URL=s3://...,
against a real S3 API server (moto's, a process of its own on a free port), configured the way an
operator points at MinIO or Ceph: AWS_ENDPOINT_URL and the usual AWS credential variables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import s3fs

from ingest_service.core.database import DatabaseTarget
from platform_cli.processes import iot_platform, start, stop, wait_ready
from tests.ingest_service.test_archive import OLD, RETENTION, TABLES, _day_partitions, _rows_of_day, old_day
from tests.utils.processes import PROJECT_ROOT, free_port

__all__ = ["old_day"]  # the fixture, shared with test_archive.py

BUCKET = "iot-archive"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "archive",
    "AWS_SECRET_ACCESS_KEY": "archive-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_endpoint(tmp_path: Path) -> Iterator[str]:
    """An S3 API server with one empty bucket; yields its endpoint URL."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    assert server is not None, "moto_server (the dev dependency moto[server]) is not installed"
    port = free_port()
    proc = start([server, "-H", "127.0.0.1", "-p", str(port)], log=tmp_path / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_ready(endpoint + "/moto-api/", timeout=60, process=proc)
        s3fs.S3FileSystem(endpoint_url=endpoint, key="archive", secret="archive-secret").mkdir(BUCKET)
        yield endpoint
    finally:
        stop([proc], grace=10)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(iot_platform(*args), cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=120)


def test_archive_to_s3_then_restore_round_trip(
    fresh_db: DatabaseTarget, db: psycopg.Connection, old_day: dict[str, list[tuple[Any, ...]]], s3_endpoint: str
) -> None:
    url = f"s3://{BUCKET}/fleet-a"
    env = {
        **os.environ,
        **CREDENTIALS,
        "DATABASE_URL": fresh_db.url,
        "RETENTION_DAYS": str(RETENTION),
        "ARCHIVE_URL": url,
        "AWS_ENDPOINT_URL": s3_endpoint,
    }

    archived = _cli("archive", "--json", env=env)
    assert archived.returncode == 0, archived.stderr
    report = json.loads(archived.stdout)
    assert report["days"] == [OLD.isoformat()] and report["archive_url"] == url
    assert report["rows"] == sum(len(rows) for rows in old_day.values())
    assert _day_partitions(db, OLD) == set()

    store = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="archive", secret="archive-secret")
    stored = {Path(p).name for p in store.ls(f"{BUCKET}/fleet-a/{OLD.isoformat()}")}
    assert stored == {"manifest.json"} | {f"{table}.parquet" for table in TABLES}
    manifest = json.loads(store.cat(f"{BUCKET}/fleet-a/{OLD.isoformat()}/manifest.json"))
    assert {f["table"]: f["rows"] for f in manifest["files"]} == {t: len(old_day[t]) for t in TABLES}

    verified = _cli("archive", "--verify", OLD.isoformat(), "--json", env=env)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["verified"] == [OLD.isoformat()]

    restored = _cli("restore", OLD.isoformat(), env=env)
    assert restored.returncode == 0, restored.stderr
    assert _rows_of_day(db, OLD) == old_day


def test_an_unreachable_s3_store_stops_the_archive_and_drops_nothing(
    fresh_db: DatabaseTarget, db: psycopg.Connection, old_day: dict[str, list[tuple[Any, ...]]]
) -> None:
    env = {
        **os.environ,
        **CREDENTIALS,
        "DATABASE_URL": fresh_db.url,
        "RETENTION_DAYS": str(RETENTION),
        "ARCHIVE_URL": f"s3://{BUCKET}/fleet-a",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "AWS_MAX_ATTEMPTS": "1",
    }
    result = _cli("archive", env=env)
    assert result.returncode == 1
    expected = f"iot-platform archive: s3://{BUCKET}/fleet-a: the archive store failed ("
    assert result.stderr.startswith(expected), result.stderr
    assert "Traceback" not in result.stderr
    assert _day_partitions(db, OLD) == {f"{t}_p{OLD:%Y%m%d}" for t in TABLES}
    assert _rows_of_day(db, OLD) == old_day
