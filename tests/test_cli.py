"""The iot-platform command: every subcommand documents itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.utils.processes import PROJECT_ROOT


@pytest.mark.parametrize("command", ["db", "migrate", "serve", "writer", "publish", "up", "mqtt", "replay"])
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
