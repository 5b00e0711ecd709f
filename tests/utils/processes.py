"""Start the platform's own processes for end-to-end tests (through platform_cli.processes, the one
process helper)."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from ingest_service.core.database import DatabaseTarget
from platform_cli.processes import PROJECT_ROOT, iot_platform, start, stop, wait_ready

__all__ = ["PROJECT_ROOT", "free_port", "running_api"]


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

    proc = start(
        iot_platform("serve", "--port", str(port), "--workers", str(workers)),
        env=env,
        own_session=False,
        preexec_fn=lower_nofile if nofile_soft is not None else None,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz", timeout=60, process=proc)
        yield base
    finally:
        stop([proc], grace=30)
