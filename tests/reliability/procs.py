"""Real processes for the fault tests: a PostgreSQL server the test owns, the API, the publisher pipe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg

from ingest_service.core.config import PROJECT_ROOT
from platform_cli.processes import iot_platform

PYTHON = sys.executable
SECRET = "reliability-test-secret-of-32-bytes-or-more"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnedPostgres:
    """An embedded PostgreSQL (pgserver) in a short data dir of its own, so a test may stop it hard.

    Never the shared server of the suite: restarting that one would break every other test.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pgdata = root / "pg"
        self.user = "pgserver" if os.geteuid() == 0 else None
        self.socket_dir: Path | None = None

    def start_first(self) -> None:
        import pgserver

        self.root.mkdir(mode=0o755, exist_ok=True)
        self.root.chmod(0o755)  # the pgserver system user must reach the data dir below
        server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        self.socket_dir = server.get_postmaster_info().socket_dir

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?" + urlencode({"host": str(self.socket_dir)})

    def _pg_ctl(self, args: list[str], timeout: float = 30) -> None:
        from pgserver import pg_ctl

        pg_ctl(args, pgdata=self.pgdata, user=self.user, timeout=timeout)

    def stop(self, mode: str = "immediate") -> None:
        self._pg_ctl(["-w", "-m", mode, "stop"])

    def start(self) -> None:
        """Start again on the same socket, as pgserver's ensure_postgres_running does."""
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"],
            timeout=60,
        )

    def restart_immediate(self) -> float:
        """Crash-stop (no checkpoint, every backend killed) and start again; returns the seconds down."""
        started = time.monotonic()
        self.stop("immediate")
        self.start()
        return time.monotonic() - started

    def destroy(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except Exception:  # already down
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def connect(url: str, **kwargs: Any) -> psycopg.Connection:
    """Connect, waiting out a server that is (re)starting."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return psycopg.connect(url, connect_timeout=5, **kwargs)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass
class Api:
    """`iot-platform serve --port P` as a subprocess (its own process group), logging to a file."""

    database_url: str
    log_path: Path
    port: int = field(default_factory=free_port)
    env_overrides: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            DEV_MODE="0",
            PROVISION_SECRET=SECRET,
            LOG_LEVEL="WARNING",
            REQUEST_TIMEOUT_SECONDS="5",
        )
        env.update(self.env_overrides)
        return env

    def start(self, migrate: bool = True, timeout: float = 90, until: str = "/readyz") -> Api:
        cmd = iot_platform("serve", "--port", str(self.port))
        if not migrate:
            cmd.append("--no-migrate")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, env=self.env(), stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        try:
            self.wait_ready(timeout, until)
        except BaseException:
            self.kill()  # never leave a server behind that did not come up
            raise
        return self

    def wait_ready(self, timeout: float, path: str = "/readyz") -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.base + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"API not ready after {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(10)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)


def generate_events(path: Path, count: int, seed: int, devices: int = 40) -> list[bytes]:
    """A reproducible stream from the publisher's generator (past timestamps, ~10% malformed, upgrades)."""
    start = time.time() - count * 0.001 - 600
    cmd = [
        PYTHON,
        "-m",
        "publisher.iot_device_message_generator",
        "--rate",
        "0",
        "--count",
        str(count),
        "--seed",
        str(seed),
        "--start-time",
        f"{start:.3f}",
        "--devices",
        str(devices),
        "--new-firmware-share",
        "0.4",
        "--upgrade-rate",
        "0.002",
    ]
    env = dict(os.environ, PROVISION_SECRET=SECRET)
    with path.open("wb") as out:
        subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.DEVNULL, check=True, timeout=60)
    return [line for line in path.read_bytes().split(b"\n") if line.strip()]


def start_pipe(url: str, events: Path, err_path: Path, batch: int = 200, concurrency: int = 2) -> subprocess.Popen:
    """pipe_to_api at full speed with fast retries; --verbose writes each line's result on stderr."""
    cmd = [
        PYTHON,
        "-m",
        "publisher.pipe_to_api",
        "--url",
        url,
        "--batch",
        str(batch),
        "--linger-ms",
        "20",
        "--concurrency",
        str(concurrency),
        "--timeout",
        "20",
        "--max-retries",
        "200",
        "--max-retry-seconds",
        "120",
        "--backoff-initial",
        "0.05",
        "--backoff-max",
        "0.5",
        "--verbose",
        "--summary-json",
    ]
    with events.open("rb") as stdin, err_path.open("wb") as err:
        return subprocess.Popen(
            cmd, cwd=PROJECT_ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=err, start_new_session=True
        )


def pipe_results(err_path: Path) -> dict[int, dict[str, Any]]:
    """Line number -> the result pipe_to_api printed for it."""
    results: dict[int, dict[str, Any]] = {}
    for text in err_path.read_text(errors="replace").splitlines():
        if not text.startswith("{"):
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict) and "line" in record:
            results[record["line"]] = record
    return results


def count_results(err_path: Path) -> int:
    return sum(1 for text in err_path.read_text(errors="replace").splitlines() if text.startswith('{"line"'))


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
