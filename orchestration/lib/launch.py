"""`iot-platform up` hook: start the Dagster webserver and daemon beside the ingest API.

ingest_service.runner.cmd_up calls `start_dagster(args, env, spawn)` once the API is ready; `spawn`
starts a process in its own session, logs to .data/logs/<name>.log, and `up` stops it on Ctrl-C.
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

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_TEMPLATE = Path(__file__).resolve().parents[1] / "instance" / "dagster.yaml"
DBT_TARGET_DIR = REPO_ROOT / "dbt_project" / "target" / "dagster"  # DbtProject(target_path=...) in defs/dbt/project.py
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


def prepare_manifest(env: Mapping[str, str], log_dir: Path) -> None:
    """Build dbt_project's manifest for the code location (it is never committed)."""
    with open(log_dir / "dbt-prepare.log", "ab") as log:
        subprocess.run(
            [sys.executable, "-m", "orchestration.lib.dbt.cli"],
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=log,
            stderr=log,
            check=True,
        )


def _wait_for_webserver(url: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster-webserver exited with {process.returncode} (see its log)")
        try:
            if httpx.get(url + "/server_info", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def start_dagster(args: argparse.Namespace, env: Mapping[str, str], spawn: Spawn) -> list[str]:
    """Start `dagster-webserver` and `dagster-daemon`; return the lines `up` prints about them."""
    from ingest_service.core.config import Settings

    data_dir = Settings(dev_mode=True).data_dir
    log_dir = data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    home = prepare_dagster_home(data_dir)
    database_url = env["DATABASE_URL"]
    ensure_schema(database_url)

    extra_env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_POSTGRES_URL": dagster_postgres_url(database_url),
        # Each dbt invocation gets a folder under here and starts from the partial_parse.msgpack the
        # manifest preparation left here: a full parse costs tens of seconds per step otherwise.
        "DBT_TARGET_PATH": str(DBT_TARGET_DIR),
    }
    prepare_manifest({**env, **extra_env}, log_dir)

    port = args.dagster_port
    url = f"http://127.0.0.1:{port}"
    workspace = str(REPO_ROOT / "workspace.yaml")
    webserver = spawn(
        "dagster-webserver",
        [str(BIN / "dagster-webserver"), "-w", workspace, "-p", str(port), "-h", "127.0.0.1"],
        extra_env,
    )
    spawn("dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], extra_env)
    ready = _wait_for_webserver(url, webserver, timeout=120)
    cron = os.getenv("ANALYTICS_HOURLY_CRON", "5 * * * *")
    return [
        f"  Dagster UI    {url}  (asset graph: {url}/asset-groups, schedules: {url}/automation)"
        + ("" if ready else "  [still starting]"),
        f"  Dagster       webserver + daemon, home {home}, runs/events/schedules in PostgreSQL schema "
        f"`{DAGSTER_SCHEMA}`; analytics_hourly_schedule runs at cron '{cron}' (UTC)",
    ]
