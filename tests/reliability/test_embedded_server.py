"""The embedded server's lifecycle: `iot-platform db stop`, and test runs that leave nothing running.

The session tests run a small pytest session of their own in a subprocess (this suite's conftest as
a plugin, a data dir of its own under /tmp), so stopping its server never touches the suite's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ingest_service.core.config import Settings
from ingest_service.core.database import start_embedded, stop_embedded
from tests.reliability.procs import OwnedPostgres
from tests.utils.processes import PROJECT_ROOT

HOLDING_TEST = """
import os, pathlib, time

def test_holds_the_server(pg_server):
    pathlib.Path(os.environ["HOLD_READY"]).write_text(str(os.getpid()))
    time.sleep(float(os.environ["HOLD_SECONDS"]))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stop_embedded_stops_the_server() -> None:
    root = Path(tempfile.mkdtemp(prefix=f"iots-{os.getpid()}-", dir="/tmp"))
    server = OwnedPostgres(root)  # data in root/pg, where Settings(data_dir=root) looks
    try:
        server.start_first()
        settings = Settings(dev_mode=True, data_dir=root)
        assert stop_embedded(settings) is True
        assert not (server.pgdata / "postmaster.pid").exists()
        assert stop_embedded(settings) is False
    finally:
        server.destroy()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir of its own; a short path under /tmp, since the unix socket path must stay short."""
    root = Path(tempfile.mkdtemp(prefix=f"iotl-{os.getpid()}-", dir="/tmp"))
    root.chmod(0o755)  # the pgserver system user (when run as root) must reach the data dir below
    (root / "suite").mkdir()
    (root / "suite" / "test_hold.py").write_text(textwrap.dedent(HOLDING_TEST))
    try:
        yield root
    finally:
        if (root / "pg" / "postmaster.pid").exists():
            stop_embedded(Settings(dev_mode=True, data_dir=root))
        shutil.rmtree(root, ignore_errors=True)


def _session(data_dir: Path, *pytest_args: str, hold_seconds: float = 300) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "PYTEST_"))}
    env.update(DATA_DIR=str(data_dir), HOLD_READY=str(data_dir / "ready"), HOLD_SECONDS=str(hold_seconds))
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-q", "--rootdir", str(data_dir / "suite"), *pytest_args, str(data_dir / "suite" / "test_hold.py")],
        cwd=PROJECT_ROOT, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _postgres_processes(pgdata: Path) -> list[psutil.Process]:
    """The postmaster of `pgdata` and every process it started (checkpointer, walwriter, backends)."""
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return []
    try:
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _wait_until_holding(session: subprocess.Popen, data_dir: Path) -> list[psutil.Process]:
    deadline = time.monotonic() + 180
    while not (data_dir / "ready").exists():
        assert session.poll() is None, session.communicate()[0]
        assert time.monotonic() < deadline, "the session never reached its test"
        time.sleep(0.2)
    processes = _postgres_processes(data_dir / "pg")
    assert processes, "the session's embedded server is not running"
    return processes


def _assert_gone(processes: list[psutil.Process]) -> None:
    survivors = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], f"postgres processes left running: {survivors}"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("how", "xdist"),
    [("sigterm", False), ("ctrl_c", True)],
    ids=["SIGTERM to a plain session", "Ctrl-C (SIGINT to the group) of an xdist session"],
)
def test_interrupted_session_stops_the_server_it_started(data_dir: Path, how: str, xdist: bool) -> None:
    session = _session(data_dir, *(["-n", "2"] if xdist else []))
    try:
        processes = _wait_until_holding(session, data_dir)
        if how == "sigterm":
            session.send_signal(signal.SIGTERM)  # a supervisor's stop: the controller only
        else:
            os.killpg(session.pid, signal.SIGINT)  # the terminal's Ctrl-C: every process of the run
        output = session.communicate(timeout=120)[0]
    finally:
        if session.poll() is None:
            os.killpg(session.pid, signal.SIGKILL)
    assert session.returncode != 0, output
    _assert_gone(processes)
    assert not (data_dir / "pg" / "postmaster.pid").exists(), output


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_failed_xdist_session_stops_the_server_once_after_its_workers(data_dir: Path) -> None:
    (data_dir / "suite" / "test_fail.py").write_text("def test_fails(pg_server):\n    assert False\n")
    session = _session(data_dir, "-n", "2", str(data_dir / "suite" / "test_fail.py"), hold_seconds=3)
    processes = _wait_until_holding(session, data_dir)
    output = session.communicate(timeout=180)[0]
    assert session.returncode == 1 and "1 failed, 1 passed" in output, output
    _assert_gone(processes)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_session_leaves_a_server_it_did_not_start_running(data_dir: Path) -> None:
    """`make up` (or a person) started it: the test run uses it and leaves it up."""
    start_embedded(Settings(dev_mode=True, data_dir=data_dir))
    before = _postgres_processes(data_dir / "pg")
    session = _session(data_dir, hold_seconds=0)
    output = session.communicate(timeout=180)[0]
    assert session.returncode == 0, output
    assert before and all(p.is_running() for p in before[:1]), output
    assert _postgres_processes(data_dir / "pg")[0].pid == before[0].pid
