"""Dagster beside `iot-platform up`: the dbt manifest prepared in a process of its own, then the
webserver and the daemon, started through `up`'s supervisor (logs in .data/logs/<name>.log, stopped
with everything else on Ctrl-C)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from orchestration.lib.dbt.cli import DAGSTER_TARGET_PATH, DBT_PROJECT_DIR
from orchestration.lib.instance import DAGSTER_SCHEMA, dagster_postgres_url, ensure_schema, prepare_dagster_home
from platform_cli.processes import PROJECT_ROOT, Spawn, python_module, venv_tool

DBT_TARGET_DIR = DBT_PROJECT_DIR / DAGSTER_TARGET_PATH
WORKSPACE = str(PROJECT_ROOT / "workspace.yaml")


class DagsterStartup:
    """Start Dagster beside the API without holding anything else up: the dbt manifest is prepared
    in a process of its own, then the webserver and the daemon start; `up` calls poll() while it
    runs and prints the lines it returns once the UI answers."""

    def __init__(self, port: int, env: Mapping[str, str], spawn: Spawn, data_dir: Path) -> None:
        self.home = prepare_dagster_home(data_dir)
        database_url = env["DATABASE_URL"]
        ensure_schema(database_url)
        self.extra_env = {
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_POSTGRES_URL": dagster_postgres_url(database_url),
            # Each dbt invocation gets a folder under here and starts from the partial_parse.msgpack
            # the manifest preparation left here: a full parse costs tens of seconds per step otherwise.
            "DBT_TARGET_PATH": str(DBT_TARGET_DIR),
        }
        self.spawn = spawn
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        # The manifest the code location loads (it is never committed): orchestration/lib/dbt/cli.py.
        self.prepare = spawn("dbt-prepare", python_module("orchestration.lib.dbt.cli"), self.extra_env, task=True)
        self.webserver: subprocess.Popen[bytes] | None = None
        self.announced = False
        self._next_probe = 0.0

    def _manifest_prepared(self) -> bool:
        code = self.prepare.poll()
        if code is not None and code != 0:
            raise RuntimeError(f"preparing the dbt manifest failed (exit {code}, see dbt-prepare.log)")
        return code == 0

    def poll(self, started_at: float) -> list[str]:
        if self.webserver is None:
            if not self._manifest_prepared():
                return []
            self.webserver = self.spawn(
                "dagster-webserver",
                [venv_tool("dagster-webserver"), "-w", WORKSPACE, "-p", str(self.port), "-h", "127.0.0.1"],
                self.extra_env,
            )
            self.spawn("dagster-daemon", [venv_tool("dagster-daemon"), "run", "-w", WORKSPACE], self.extra_env)
            return []
        if self.announced or time.monotonic() < self._next_probe:
            return []
        self._next_probe = time.monotonic() + 1.0
        if self.webserver.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {self.webserver.returncode} (see its log)")
        try:
            if httpx.get(self.url + "/server_info", timeout=1.0).status_code != 200:
                return []
        except httpx.HTTPError:
            return []
        self.announced = True
        cron = os.getenv("ANALYTICS_HOURLY_CRON", "5 * * * *")
        url = self.url
        return [
            f"  Dagster UI    {url}  ready {time.time() - started_at:.1f} s after `make up`"
            f"  (asset graph: {url}/asset-groups, schedules: {url}/automation)",
            f"  Dagster       webserver + daemon, home {self.home}, runs/events/schedules in PostgreSQL schema "
            f"`{DAGSTER_SCHEMA}`; analytics_hourly_schedule runs at cron '{cron}' (UTC)",
        ]
