"""The iot-platform command: every subcommand documents itself, exit statuses are the commands' own."""

from __future__ import annotations

import os
import subprocess

import pytest

from ingest_service.core.database import DatabaseTarget
from platform_cli.main import COMMANDS, main
from platform_cli.processes import iot_platform
from tests.utils.processes import PROJECT_ROOT

DOCUMENTED = [
    "db",
    "migrate",
    "serve",
    "writer",
    "publish",
    "mqtt",
    "up",
    "dbt",
    "partitions",
    "archive",
    "restore",
    "replay",
]  # README's command table


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(iot_platform(*args), cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=120)


def test_cli_lists_every_documented_subcommand() -> None:
    assert [command.name for command in COMMANDS] == DOCUMENTED
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: iot-platform [OPTIONS] COMMAND")
    rows = result.stdout.split("Commands:")[1].splitlines()
    listed = [row.split()[0] for row in rows if row.startswith("  ") and not row[2].isspace()]  # not wrapped lines
    assert listed == DOCUMENTED


@pytest.mark.parametrize("command", [name for name in DOCUMENTED if name != "dbt"])  # dbt's --help is dbt's
def test_cli_subcommand_has_help(command: str) -> None:
    result = _run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: iot-platform {command}")


def test_cli_shared_options_and_defaults_in_help() -> None:
    serve = _run("serve", "--help").stdout
    assert "--port INTEGER" in serve and "[default: 8000]" in serve and "--no-migrate" in serve
    for command in ("publish", "up"):
        text = _run(command, "--help").stdout
        for option in ("--devices", "--rate", "--count", "--seed", "--new-firmware-share", "--upgrade-rate", "--batch"):
            assert option in text, (command, option)


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command 'no-such-command'" in capsys.readouterr().err
    assert main(["db", "sideways"]) == 2
    assert "'sideways' is not one of 'start', 'url', 'env', 'stop'" in capsys.readouterr().err
    assert main(["serve", "--port", "eighty"]) == 2


def test_cli_configuration_error_exits_2_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV_MODE", "1")
    monkeypatch.setenv("MAX_CONNECTIONS", "0")
    result = _run("writer", env={**os.environ})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("iot-platform: configuration error:"), result.stderr
    assert "greater than or equal to 1" in result.stderr


def test_cli_migrate_applies_schema(fresh_db: DatabaseTarget) -> None:
    result = _run("migrate", env={**os.environ, "DATABASE_URL": fresh_db.url})
    assert result.returncode == 0, result.stderr
    assert "migrated" in result.stdout


def test_cli_dbt_passes_every_argument_to_dbt(fresh_db: DatabaseTarget) -> None:
    result = _run("dbt", "--version", env={**os.environ, "DATABASE_URL": fresh_db.url})
    assert result.returncode == 0, result.stderr
    assert "installed:" in result.stdout.lower() or "core:" in result.stdout.lower(), result.stdout


def test_cli_archive_then_restore_a_day(fresh_db: DatabaseTarget, tmp_path) -> None:
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
    env = {**os.environ, "DATABASE_URL": fresh_db.url, "ARCHIVE_URL": str(tmp_path)}

    assert "everything is kept" in _run("archive", env=env).stdout
    archived = _run("archive", env={**env, "RETENTION_DAYS": "5"})
    assert archived.returncode == 0, archived.stderr
    assert f"{day.isoformat()}: archived (" in archived.stdout and "raw_record 1" in archived.stdout
    assert (tmp_path / day.isoformat() / "manifest.json").exists()
    verified = _run("archive", "--verify", day.isoformat(), env=env)
    assert verified.returncode == 0, verified.stderr
    restored = _run("restore", f"raw_record_p{day:%Y%m%d}", env=env)
    assert restored.returncode == 0, restored.stderr
    assert f"{day.isoformat()}: restored" in restored.stdout
    again = _run("restore", day.isoformat(), env=env)
    assert again.returncode == 1 and "exist already" in again.stderr
    with psycopg.connect(fresh_db.url) as conn:
        assert conn.execute("select body_text from ingest.raw_record").fetchall() == [("x",)]
    (tmp_path / day.isoformat() / "raw_record.parquet").write_bytes(b"not parquet")
    broken = _run("archive", "--verify", day.isoformat(), env=env)
    assert broken.returncode == 1 and "raw_record.parquet" in broken.stderr


def test_serve_workers_default_to_web_concurrency_or_half_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from platform_cli.services import default_workers

    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert default_workers() == 3
    for unusable in ("0", "many", ""):
        monkeypatch.setenv("WEB_CONCURRENCY", unusable)
        assert default_workers() == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_workers() == 4
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1
