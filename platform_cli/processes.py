"""The one process helper: every process the platform starts for itself (`up` and its services, the
tests' and benchmarks' servers) is built, started, awaited and stopped here."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
# Seconds a process gets between SIGTERM and SIGKILL: uvicorn's graceful shutdown is 30 s, but by
# then `up`'s API has no requests left (the simulator is stopped first).
STOP_GRACE_SECONDS = 20.0


def iot_platform(*args: str) -> list[str]:
    """The command line of `iot-platform <args>` in this interpreter (no dependence on PATH)."""
    return [PYTHON, "-m", "platform_cli", *args]


def python_module(module: str, *args: str) -> list[str]:
    return [PYTHON, "-m", module, *args]


def venv_tool(name: str) -> str:
    """An executable installed beside this interpreter (dbt, dagster-webserver, ...)."""
    return str(Path(PYTHON).with_name(name))


def start(
    cmd: list[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    own_session: bool = True,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start `cmd` from the repository root, with its output appended to `log` when given (other
    `popen` arguments go to subprocess.Popen).

    In its own session (the default), Ctrl-C in the terminal does not reach it and `stop` ends its
    whole process group (uvicorn's workers, dbt's children) at once.
    """
    options: dict[str, Any] = {"cwd": PROJECT_ROOT, "env": env, "stdin": stdin, "start_new_session": own_session}
    if log is None:
        return subprocess.Popen(cmd, stdout=stdout, **options, **popen)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=out, **options, **popen)


def _signal(proc: subprocess.Popen[Any], signum: int) -> None:
    try:
        if os.getpgid(proc.pid) == proc.pid:  # a session of its own: its whole group
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
    except ProcessLookupError:
        pass


def _group_members(pgid: int) -> list[psutil.Process]:
    """The live processes of a process group (a zombie is dead: its parent only has to reap it)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def stop(processes: Iterable[subprocess.Popen[Any]], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to every process still running (to its group when it leads one), then SIGKILL to
    whatever has not exited after `grace` seconds. A group is stopped when all of it is: its leader
    can exit before its members (Dagster's code servers outlive the webserver by a moment)."""
    processes = list(processes)
    groups = []
    for proc in processes:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(proc.pid) == proc.pid:
                    groups.append(proc.pid)
            _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in processes:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait()
    for pgid in groups:
        _, alive = psutil.wait_procs(_group_members(pgid), timeout=max(0.1, deadline - time.monotonic()))
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=5)


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen[Any] | None = None) -> None:
    """Until `url` answers 200; fails early when `process` (the server behind it) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url} did not come up: its process exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


class Spawn(Protocol):
    def __call__(
        self, name: str, cmd: list[str], extra_env: Mapping[str, str] | None = None, *, task: bool = False
    ) -> subprocess.Popen[bytes]: ...


class Supervised:
    """The processes of one supervisor run (`iot-platform up`): each in its own session, logging to
    `<logs>/<name>.log`. Services run until the supervisor stops; tasks run to completion."""

    def __init__(self, logs: Path, env: Mapping[str, str]) -> None:
        self.logs = logs
        self.env = dict(env)
        self.services: list[subprocess.Popen[bytes]] = []
        self.tasks: list[subprocess.Popen[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def spawn(
        self, name: str, cmd: list[str], extra_env: Mapping[str, str] | None = None, *, task: bool = False
    ) -> subprocess.Popen[bytes]:
        proc = start(cmd, env={**self.env, **(extra_env or {})}, log=self.logs / f"{name}.log")
        (self.tasks if task else self.services).append(proc)
        return proc

    def adopt(self, *processes: subprocess.Popen[bytes]) -> None:
        """Services started otherwise (piped into each other) that the supervisor also stops."""
        self.services.extend(processes)

    def all_running(self) -> bool:
        return all(proc.poll() is None for proc in self.services)

    def failed(self) -> list[subprocess.Popen[bytes]]:
        return [proc for proc in self.services if proc.poll() not in (None, 0)]

    def stop(self) -> None:
        stop(self.services + self.tasks)
