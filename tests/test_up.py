"""`iot-platform up` (what `make up` runs): the simulator streams without waiting for Dagster, the
first dbt build starts once an event is stored, both times are printed, and SIGTERM stops all of it.

No timed assertions (the figures are in the README, measured with `make up`): only that each
milestone is reported, in the order the platform reaches them, and that nothing is left running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from ingest_service.core.database import DatabaseTarget
from platform_cli.processes import iot_platform
from tests.utils.processes import PROJECT_ROOT, free_port

FIRST_EVENT = re.compile(r"first event +stored ([\d.]+) s after `make up`")
FIRST_BUILD = re.compile(r"first dbt build finished ([\d.]+) s after `make up` \(PASS=\d+ WARN=(\d+) ERROR=(\d+)")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_up_reports_the_first_event_and_the_first_dbt_build(fresh_db: DatabaseTarget, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "DBT_", "DAGSTER_"))}
    env.update(DATABASE_URL=fresh_db.url, DATA_DIR=str(tmp_path), DEV_MODE="1", UP_STARTED_AT=str(time.time()))
    ports = ["--port", str(free_port()), "--dagster-port", str(free_port())]
    command = iot_platform("up", *ports, "--devices", "5", "--rate", "50")
    up = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert up.stdout is not None
        for line in up.stdout:
            lines.append(line.strip())
            if FIRST_BUILD.search(line) or "first dbt build failed" in line:
                break
        processes = [psutil.Process(up.pid), *psutil.Process(up.pid).children(recursive=True)]
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=120)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    output = "\n".join(lines)
    banner = next(i for i, line in enumerate(lines) if line.startswith("IoT platform is up"))
    event = next((i, m) for i, line in enumerate(lines) if (m := FIRST_EVENT.search(line)))
    build = next((i, m) for i, line in enumerate(lines) if (m := FIRST_BUILD.search(line)))
    assert banner < event[0] < build[0], output
    assert build[1].group(2, 3) == ("0", "0"), output  # WARN=0 ERROR=0
    assert 0 < float(event[1].group(1)) < float(build[1].group(1)), output
    survivors = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], survivors
