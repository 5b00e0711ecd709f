"""The Dagster instance `make up` runs: $DAGSTER_HOME from the template in orchestration/instance/, its
storage in a schema of the platform's own database. Given the data folder and the database URL by
its caller (`iot-platform up`, platform_cli/dagster.py); the ingest API's package is not needed."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

INSTANCE_TEMPLATE = Path(__file__).resolve().parents[1] / "instance" / "dagster.yaml"
DAGSTER_SCHEMA = "dagster"


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
