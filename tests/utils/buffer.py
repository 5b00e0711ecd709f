"""Buffered-mode helpers: a NATS server (the machine's shared one, or one a test owns), per-test
stream names, writer processes, and the receipts' results."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ingest_service.core.config import PROJECT_ROOT
from platform_cli.processes import iot_platform

SHARED_NATS_URL = "nats://127.0.0.1:4222"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(url: str) -> bool:
    host, _, port = url.removeprefix("nats://").partition(":")
    try:
        with socket.create_connection((host, int(port or 4222)), timeout=1):
            return True
    except OSError:
        return False


class OwnedNats:
    """A nats-server with JetStream this test owns (and may stop): `-js -sd <dir>` on a free port.
    Never the machine's shared server, which other tests and engineers use."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> OwnedNats:
        log = (self.store_dir.parent / f"nats-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 15
        while not reachable(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server on {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def unique_prefix() -> str:
    """Stream and subject names of one test: parallel runs (and engineers) never share a stream."""
    return f"t{os.getpid()}x{uuid.uuid4().hex[:8]}"


def buffer_env(nats_url: str, prefix: str, **overrides: str) -> dict[str, str]:
    env = {
        "INGEST_BUFFER": "jetstream",
        "NATS_URL": nats_url,
        "INGEST_BUFFER_STREAM": prefix.upper(),
        "INGEST_BUFFER_SUBJECT_PREFIX": prefix,
        "INGEST_BUFFER_MAX_BYTES": str(256 * 1024**2),
        "INGEST_BUFFER_MAX_AGE_SECONDS": "3600",
    }
    env.update(overrides)
    return env


def delete_streams(nats_url: str, prefix: str) -> None:
    import nats

    async def run() -> None:
        nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
        js = nc.jetstream()
        for name in (prefix.upper(), prefix.upper() + "_DEAD"):
            try:
                await js.delete_stream(name)
            except Exception:  # never created
                pass
        await nc.close()

    try:
        asyncio.run(run())
    except Exception:  # the server is gone: nothing to clean
        pass


@dataclass
class Writer:
    """`iot-platform writer` as a subprocess (its own process group), with its metrics port."""

    env: dict[str, str]
    log_path: Path
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self) -> Writer:
        cmd = iot_platform("writer", "--metrics-port", str(self.metrics_port))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 60
        while self.metrics() is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"writer did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def metrics(self) -> dict[str, float] | None:
        """Sample name (with labels) -> value; None while the metrics port is not up."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return None
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return out

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait: the writer finishes its groups first."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def readiness(base: str) -> dict[str, Any]:
    return httpx.get(base + "/readyz", timeout=5).json()


def wait_drained(base: str, timeout: float) -> dict[str, Any]:
    """Until the buffer's lag is 0 (every accepted request acknowledged by a writer)."""
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = readiness(base)
        if state.get("buffer", {}).get("lag") == 0:
            return state["buffer"]
        time.sleep(0.2)
    raise AssertionError(f"the buffer did not drain in {timeout:.0f} s: {state}")


def receipt(base: str, receipt_id: str, timeout: float = 10) -> dict[str, Any]:
    """A receipt's state, retrying 503 (database or buffer unavailable) as a client does."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(f"{base}/ingest/receipts/{receipt_id}", timeout=10)
        if answer.status_code != 503 or time.monotonic() > deadline:
            assert answer.status_code == 200, answer.text
            return answer.json()
        time.sleep(float(answer.headers.get("retry-after", "1")))


def wait_stored(base: str, receipt_id: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        state = receipt(base, receipt_id)
        if state["status"] == "stored":
            return state["results"]
        assert state["status"] == "accepted", state
        if time.monotonic() > deadline:
            raise AssertionError(f"receipt {receipt_id} still {state['status']} after {timeout:.0f} s")
        time.sleep(0.1)


def line_results(base: str, accepted: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """pipe_to_api's per-line answers in buffered mode ({"status": "accepted", "receipt", "batch_index"})
    -> each line's final result, read from its receipt (one look-up per receipt)."""
    by_receipt: dict[str, list[dict[str, Any]]] = {}
    out: dict[int, dict[str, Any]] = {}
    for line, answer in accepted.items():
        if answer.get("status") != "accepted":
            out[line] = answer
            continue
        rid = answer["receipt"]
        if rid not in by_receipt:
            by_receipt[rid] = wait_stored(base, rid)
        out[line] = by_receipt[rid][answer["batch_index"]]
    return out
