"""A small PostgreSQL resource for the Python checks and metrics (dbt connects through its own profile)."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql
from psycopg.abc import QueryNoTemplate as Query
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row


class PostgresResource(dg.ConfigurableResource):
    """The database the API writes and dbt builds into, from the shared POSTGRES_* settings.

    `host` may be a unix socket folder: the embedded server listens only there.
    """

    host: str
    port: int = 5432
    user: str
    password: str = ""
    dbname: str
    connect_timeout: int = 10

    @property
    def conninfo(self) -> str:
        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=self.dbname,
            connect_timeout=self.connect_timeout,
            application_name="dagster",
        )

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        # Read-only and autocommit: the checks and metrics only look, and must never hold a snapshot
        # open while the API keeps writing.
        with psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row) as conn:
            conn.execute("set default_transaction_read_only = on")
            yield conn

    def fetch_all(self, query: Query, params: Sequence[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.connect() as conn:
            return conn.execute(query, params).fetchall()

    def fetch_one(self, query: Query, params: Sequence[Any] | dict[str, Any] | None = None) -> dict[str, Any]:
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
        assert row is not None, "query returned no row"
        return row

    def max_of(self, table: tuple[str, str], column: str) -> Any:
        """max(column) of schema.table, or None when the table is empty or does not exist yet."""
        with self.connect() as conn:
            found = conn.execute("select to_regclass(%s) is not null as ok", (".".join(map(_quote, table)),)).fetchone()
            if not found or not found["ok"]:
                return None
            query = sql.SQL("select max({}) as newest from {}").format(sql.Identifier(column), sql.Identifier(*table))
            row = conn.execute(query).fetchone()
        return row["newest"] if row else None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
