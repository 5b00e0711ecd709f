from __future__ import annotations

import secrets
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from ingest_service.core.database import DatabaseTarget


def as_login(target: DatabaseTarget, user: str, password: str) -> DatabaseTarget:
    """The same database, logged in as another role."""
    split = urlsplit(target.url)
    host = split.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return DatabaseTarget(urlunsplit(split._replace(netloc=netloc)), target.embedded)


@pytest.fixture
def login_factory(fresh_db: DatabaseTarget) -> Iterator:
    """make(group) -> a DatabaseTarget logged in as a new LOGIN role that is a member of `group`, set up the
    way docs/security.md says: its sessions run as the group (`alter role ... set role`), so what it
    creates is owned by the group and default privileges apply."""
    created: list[str] = []

    def make(group: str) -> DatabaseTarget:
        name = f"{group}_login_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        with psycopg.connect(fresh_db.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("create role {} login password {} in role {}").format(
                    sql.Identifier(name), sql.Literal(password), sql.Identifier(group)
                )
            )
            conn.execute(sql.SQL("alter role {} set role {}").format(sql.Identifier(name), sql.Identifier(group)))
        created.append(name)
        return as_login(fresh_db, name, password)

    yield make
    with psycopg.connect(fresh_db.url, autocommit=True) as conn:
        for name in created:
            conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (name,))
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


@pytest.fixture
def db(fresh_db: DatabaseTarget) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db.url, autocommit=True) as conn:
        yield conn
