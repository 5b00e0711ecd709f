"""The HTTP stack the ingest API runs in, shared with the benchmark's no-op ceiling."""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from bench import noop_app
from ingest_service.core.database import DatabaseTarget
from ingest_service.main import TELEMETRY, create_app
from platform_cli.processes import wait_ready
from tests.ingest_service.conftest import make_settings
from tests.utils.processes import PROJECT_ROOT, free_port


def _stack(app) -> list[type]:
    return [m.cls for m in app.user_middleware]


def test_noop_ceiling_runs_in_the_api_stack(fresh_db: DatabaseTarget) -> None:
    """The benchmark's HTTP ceiling must measure the API's own stack: same middleware, same telemetry
    settings, routes one router deep like the API's; only the handler differs."""
    api = create_app(make_settings(fresh_db))
    assert _stack(noop_app.app) == _stack(api)
    assert noop_app.app._telemetry == api._telemetry
    assert {key: api._telemetry[key] for key in TELEMETRY} == TELEMETRY
    with TestClient(noop_app.app) as client:
        answer = client.post("/ingest", json={"device_id": 1})
    assert answer.status_code == 200
    assert len(answer.headers["x-request-id"]) == 32


def test_startup_objects_are_frozen_out_of_the_collector(fresh_db: DatabaseTarget) -> None:
    gc.unfreeze()
    with TestClient(create_app(make_settings(fresh_db))) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_noop_ceiling_is_served_by_the_api_server_stack() -> None:
    """`python -m bench.noop_app` runs on the API's HTTP server (the edge protocol and its limits):
    a head over MAX_HEADER_BYTES gets the edge's 431, and no Server header is sent."""
    port = free_port()
    env = {**os.environ, "MAX_HEADER_BYTES": "2048"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.noop_app", "--port", str(port)], cwd=PROJECT_ROOT, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=45, process=proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):  # the server closes after answering
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 431") and b"headers_too_large" in answer
        ok = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert ok.status_code == 200 and "server" not in ok.headers
    finally:
        proc.terminate()
        proc.wait(20)
