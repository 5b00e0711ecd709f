"""`iot-platform up` hook: start the Dagster webserver and daemon beside the ingest API.

ingest_service.runner.cmd_up creates `DagsterStartup(args, env, spawn)` once the API is ready and
the simulator streams, then polls it; `spawn` starts a process in its own session, logs to
.data/logs/<name>.log, and `up` stops it on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from orchestration.lib.dbt.cli import DAGSTER_TARGET_PATH, DBT_PROJECT_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_TEMPLATE = Path(__file__).resolve().parents[1] / "instance" / "dagster.yaml"
DBT_TARGET_DIR = DBT_PROJECT_DIR / DAGSTER_TARGET_PATH
DAGSTER_SCHEMA = "dagster"
BIN = Path(sys.executable).parent

Spawn = Callable[..., subprocess.Popen]


def dagster_postgres_url(database_url: str, schema: str = DAGSTER_SCHEMA) -> str:
    """DATABASE_URL with Dagster's tables kept in their own schema (search_path via libpq `options`).

    The driver is named: SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, whose server-side
    parameters break dagster-postgres's `NOTIFY run_events, %(id)s` (every event write fails)."""
    split = urlsplit(database_url)
    query = [(k, v) for k, v in parse_qsl(split.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(split._replace(scheme="postgresql+psycopg2", query=urlencode(query)))


def prepare_dagster_home(data_dir: Path) -> Path:
    """$DAGSTER_HOME under the data folder, with the instance template as its dagster.yaml."""
    home = data_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    return home


def ensure_schema(database_url: str, schema: str = DAGSTER_SCHEMA) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create schema if not exists {}").format(sql.Identifier(schema)))


class DagsterStartup:
    """Start Dagster beside the API without holding anything else up: the dbt manifest is prepared
    in a process of its own, then the webserver and the daemon start; `up`
    calls poll() while it runs and prints the lines it returns once the UI answers."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str], spawn: Spawn) -> None:
        from ingest_service.core.config import Settings

        data_dir = Settings(dev_mode=True).data_dir
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
        self.url = f"http://127.0.0.1:{args.dagster_port}"
        self.port = args.dagster_port
        # The manifest the code location loads (it is never committed): orchestration/lib/dbt/cli.py.
        self.prepare = spawn(
            "dbt-prepare", [sys.executable, "-m", "orchestration.lib.dbt.cli"], self.extra_env, task=True
        )
        self.webserver: subprocess.Popen | None = None
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
            workspace = str(REPO_ROOT / "workspace.yaml")
            self.webserver = self.spawn(
                "dagster-webserver",
                [str(BIN / "dagster-webserver"), "-w", workspace, "-p", str(self.port), "-h", "127.0.0.1"],
                self.extra_env,
            )
            self.spawn("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], self.extra_env)
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
