"""Start the platform's own processes for end-to-end tests."""

from __future__ import annotations

import os
import resource
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
def running_api(
    target: DatabaseTarget,
    secret: str,
    workers: int = 1,
    nofile_soft: int | None = None,
    **env_overrides: str,
) -> Iterator[str]:
    """`iot-platform serve` on a free port against `target`; yields its base URL. `nofile_soft`
    starts it with that soft RLIMIT_NOFILE (serve raises it to the hard limit)."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": target.url, "PROVISION_SECRET": secret, "DEV_MODE": "0", **env_overrides}

    def lower_nofile() -> None:
        if nofile_soft is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest_service.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=PROJECT_ROOT,
        env=env,
        preexec_fn=lower_nofile if nofile_soft is not None else None,
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
