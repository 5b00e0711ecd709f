"""The iot-platform command: every subcommand documents itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.utils.processes import PROJECT_ROOT


@pytest.mark.parametrize("command", ["db", "migrate", "serve", "writer", "publish", "up", "mqtt", "archive", "restore"])
def test_cli_subcommand_has_help(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ingest_service.cli", command, "--help"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.startswith(f"usage: iot-platform {command}")


def test_cli_migrate_applies_schema(fresh_db, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    env = {**os.environ, "DATABASE_URL": fresh_db.url}
    result = subprocess.run(
        [sys.executable, "-m", "ingest_service.cli", "migrate"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert "migrated" in result.stdout


def test_cli_archive_then_restore_a_day(fresh_db, tmp_path) -> None:
    import os
    from datetime import timedelta

    import psycopg

    from ingest_service.lifecycle import partitions

    day = partitions.today() - timedelta(days=10)
    with psycopg.connect(fresh_db.url, autocommit=True) as conn:
        partitions.ensure(conn, day, day)
        conn.execute(
            "insert into ingest.raw_record (received_at, request_id, batch_index, body_text) values (%s, 'r', 0, 'x')",
            (f"{day.isoformat()} 08:00:00+00",),
        )

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest_service.cli", *args],
            cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
            env={**os.environ, "DATABASE_URL": fresh_db.url, "ARCHIVE_URL": str(tmp_path), **env},
        )  # fmt: skip

    assert "everything is kept" in cli("archive").stdout
    archived = cli("archive", RETENTION_DAYS="5")
    assert archived.returncode == 0, archived.stderr
    assert f"{day.isoformat()}: archived (" in archived.stdout and "raw_record 1" in archived.stdout
    assert (tmp_path / day.isoformat() / "manifest.json").exists()
    restored = cli("restore", f"raw_record_p{day:%Y%m%d}")
    assert restored.returncode == 0, restored.stderr
    assert f"{day.isoformat()}: restored" in restored.stdout
    again = cli("restore", day.isoformat())
    assert again.returncode == 1 and "exist already" in again.stderr
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select body_text from ingest.raw_record").fetchall() == [("x",)]


def test_serve_workers_default_to_web_concurrency_or_half_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ingest_service.runner import default_workers

    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert default_workers() == 3
    for unusable in ("0", "many", ""):
        monkeypatch.setenv("WEB_CONCURRENCY", unusable)
        assert default_workers() == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_workers() == 4
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1
