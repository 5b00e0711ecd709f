"""The database commands: `db`, `migrate`, `dbt`."""

from __future__ import annotations

import os
import subprocess

import click

from ingest_service.core.config import PROJECT_ROOT, Settings
from ingest_service.core.database import embedded_data_dir, resolve_target, stop_embedded, tool_environment
from platform_cli.processes import venv_tool

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"


def database_settings() -> Settings:
    """Settings for the database commands (db, migrate, dbt): they never use the provisioning secret,
    so they must not refuse to run where it is unset. `serve` checks the secret itself."""
    if os.environ.get("DEV_MODE") is None:
        return Settings(dev_mode=True)
    return Settings()


@click.command(help="start the embedded PostgreSQL (or check DATABASE_URL) and print where it is")
@click.argument("action", default="start", type=click.Choice(["start", "url", "env", "stop"]))
def db(action: str) -> int:
    settings = database_settings()
    if action == "stop":
        stopped = stop_embedded(settings)
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    target = resolve_target(settings)
    if action == "url":
        print(target.url)
    elif action == "env":
        for key, value in tool_environment(target, base={}).items():
            print(f"export {key}={value!r}")
    else:
        where = f"embedded, data in {embedded_data_dir(settings)}" if target.embedded else "DATABASE_URL"
        print(f"PostgreSQL ready ({where}): {target.url}")
    return 0


@click.command(
    help="apply the schema migrations to DATABASE_URL (or the embedded server) and create the day partitions from "
    "a week back to a week ahead; with INGEST_BUFFER=jetstream, "
    "create or update the JetStream streams and consumer too"
)
def migrate() -> int:
    from ingest_service.core import migrate as migrations

    settings = database_settings()
    target = resolve_target(settings)
    created = migrations.upgrade(target, settings.retention_days)
    print(f"migrated {target.parts['dbname']} to {migrations.current_revision(target)}")
    print(f"day partitions: {len(created)} created")
    if settings.ingest_buffer == "jetstream":
        from ingest_service.buffer.stream import ensure_stream_sync

        print(f"buffer: {ensure_stream_sync(settings)}")
    return 0


# Every argument, --help included, is dbt's.
@click.command(
    help="run dbt from dbt_project/ against the configured database",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
)
@click.argument("dbt_args", nargs=-1, type=click.UNPROCESSED)
def dbt(dbt_args: tuple[str, ...]) -> int:
    env = tool_environment(resolve_target(database_settings()))
    env.setdefault("DBT_PROFILES_DIR", str(DBT_PROJECT_DIR))
    return subprocess.call([venv_tool("dbt"), *dbt_args], cwd=DBT_PROJECT_DIR, env=env)
