"""Start the platform's own processes for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ingest_service.core.database import DatabaseTarget
from ingest_service.runner import wait_ready

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_api(target: DatabaseTarget, secret: str, workers: int = 1, **env_overrides: str) -> Iterator[str]:
    """`iot-platform serve` on a free port against `target`; yields its base URL."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": target.url, "PROVISION_SECRET": secret, "DEV_MODE": "0", **env_overrides}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest_service.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=PROJECT_ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz", timeout=60, process=proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
