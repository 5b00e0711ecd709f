"""Apply the versioned, additive migrations with Alembic."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, pool

from ingest_service.core.database import DatabaseTarget, ensure_database

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(target: DatabaseTarget) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", target.sqlalchemy_url.replace("%", "%%"))
    return config


def upgrade(target: DatabaseTarget, retention_days: int | None = None) -> list[str]:
    """Migrate to the head revision, then create the day partitions of the window ahead (and behind)
    that are missing (ingest_service/lifecycle/partitions.py); their names."""
    from ingest_service.lifecycle import partitions

    ensure_database(target)
    command.upgrade(alembic_config(target), "head")
    with psycopg.connect(target.url, autocommit=True) as conn:
        return partitions.ensure_ahead(conn, retention_days)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config(DatabaseTarget("postgresql://x@/x", False))).get_current_head()


def current_revision(target: DatabaseTarget) -> str | None:
    engine = create_engine(target.sqlalchemy_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn, opts={"version_table_schema": "ingest"}).get_current_revision()
    finally:
        engine.dispose()
