"""platform_cli.processes, the one process helper: what `up` and the tests start, they stop, whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from platform_cli.processes import Supervised, start, stop, wait_ready
from tests.utils.processes import free_port

# A shell with two children that waits for them; with `trap '' TERM` none of them heeds SIGTERM.
FAMILY = "sleep 60 & sleep 60 & echo started; wait"


def _family(script: str) -> tuple[subprocess.Popen[bytes], list[psutil.Process]]:
    proc = start(["sh", "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    return proc, psutil.Process(proc.pid).children(recursive=True)


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running once the signals sent have been delivered (bounded wait, not a timing)."""
    return psutil.wait_procs(processes, timeout=30)[1]


def test_stop_ends_the_whole_process_group() -> None:
    proc, children = _family(FAMILY)
    assert len(children) == 2
    stop([proc], grace=10)
    assert proc.returncode == -signal.SIGTERM
    assert _alive(children) == []


def test_stop_kills_a_group_that_ignores_sigterm() -> None:
    proc, children = _family("trap '' TERM; " + FAMILY)
    stop([proc], grace=0.5)
    assert proc.returncode == -signal.SIGKILL
    assert _alive(children) == []


def test_stop_signals_only_the_process_without_a_session_of_its_own() -> None:
    proc = start([sys.executable, "-c", "import time; time.sleep(60)"], own_session=False)
    assert os.getpgid(proc.pid) == os.getpgid(0)
    stop([proc], grace=10)  # had it signalled the group, it would have stopped this test run too
    assert proc.returncode == -signal.SIGTERM


def test_supervised_logs_each_process_and_reports_the_failed(tmp_path: Path) -> None:
    processes = Supervised(tmp_path / "logs", {**os.environ, "GREETING": "hello"})
    task = processes.spawn("task", [sys.executable, "-c", "import os; print(os.environ['GREETING'])"], task=True)
    service = processes.spawn("service", [sys.executable, "-c", "import time; time.sleep(60)"])
    failing = processes.spawn("failing", [sys.executable, "-c", "raise SystemExit(3)"], {"GREETING": "bye"})
    assert task.wait(30) == 0 and failing.wait(30) == 3
    assert not processes.all_running()
    assert processes.failed() == [failing]
    processes.stop()
    assert service.returncode == -signal.SIGTERM
    assert (tmp_path / "logs" / "task.log").read_text() == "hello\n"


def test_wait_ready_fails_as_soon_as_the_server_exits() -> None:
    proc = start([sys.executable, "-c", "raise SystemExit(4)"])
    with pytest.raises(RuntimeError, match="exited with 4"):
        wait_ready(f"http://127.0.0.1:{free_port()}/readyz", timeout=60, process=proc)
