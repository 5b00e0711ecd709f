"""Test databases: one migrated template per session, a fresh copy per test that needs isolation.

The server is `DATABASE_URL`'s when set (CI runs the suite against PostgreSQL 15 that way),
else the embedded PostgreSQL 16 under `.data/`.
"""

from __future__ import annotations

import itertools
import os

import psycopg
from psycopg import sql

from ingest_service.core import migrate
from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget, resolve_target

# One template per test session (pid): concurrent sessions on one server must not share it.
TEMPLATE_DB = f"iot_test_template_{os.getpid()}"
_counter = itertools.count()


def server_target() -> DatabaseTarget:
    """The server the suite runs against, pointed at its maintenance database."""
    settings = Settings(dev_mode=True, database_url=os.environ.get("DATABASE_URL") or None)
    return resolve_target(settings).with_database("postgres")


def _admin(server: DatabaseTarget) -> psycopg.Connection:
    return psycopg.connect(server.url, autocommit=True)


def drop_database(server: DatabaseTarget, name: str) -> None:
    with _admin(server) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def build_template(server: DatabaseTarget) -> DatabaseTarget:
    """(Re)create the migrated template database once per test session."""
    drop_database(server, TEMPLATE_DB)
    template = server.with_database(TEMPLATE_DB)
    migrate.upgrade(template)
    return template


def create_fresh_database(server: DatabaseTarget, prefix: str = "iot_t") -> DatabaseTarget:
    """A new database copied from the migrated template; the caller drops it."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    with _admin(server) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DB))
        )
    return server.with_database(name)
