"""Which PostgreSQL to use: `DATABASE_URL`, or the embedded server (pgserver) under the data folder.

The embedded server listens on a unix socket inside its data folder and keeps running after the
process that started it exits, so the API, dbt, Dagster and the tests can share it;
`iot-platform db stop` stops it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ingest_service.core.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseTarget:
    """Connection facts every tool derives its own configuration from."""

    url: str  # libpq form: postgresql://user:password@host:port/db?host=/socket/dir
    embedded: bool

    @property
    def parts(self) -> dict[str, str]:
        """host/port/user/password/dbname, in the shape dbt profiles and dagster-postgres want."""
        split = urlsplit(self.url)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        return {
            "host": query.get("host") or split.hostname or "localhost",
            "port": str(split.port or query.get("port") or 5432),
            "user": split.username or query.get("user") or "postgres",
            "password": split.password or query.get("password") or "",
            "dbname": split.path.lstrip("/") or "postgres",
        }

    def with_database(self, dbname: str) -> DatabaseTarget:
        split = urlsplit(self.url)
        return DatabaseTarget(urlunsplit(split._replace(path="/" + quote(dbname))), self.embedded)

    @property
    def sqlalchemy_url(self) -> str:
        return "postgresql+psycopg://" + self.url.split("://", 1)[1]


def normalize_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def embedded_data_dir(settings: Settings) -> Path:
    return settings.data_dir / "pg"


def start_embedded(settings: Settings) -> DatabaseTarget:
    """Start (or attach to) the embedded PostgreSQL 16 and return a URL for `settings.database_name`."""
    import pgserver  # imported lazily: only the embedded mode needs it

    pgdata = embedded_data_dir(settings)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir
    url = "postgresql://postgres@/" + settings.database_name + "?" + urlencode({"host": str(socket_dir)})
    return DatabaseTarget(url, embedded=True)


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    from pgserver import pg_ctl
    from pgserver.utils import PostmasterInfo

    pgdata = embedded_data_dir(settings)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    if info is None or not info.is_running():
        return False
    import os

    user = "pgserver" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def resolve_target(settings: Settings) -> DatabaseTarget:
    if settings.database_url:
        return DatabaseTarget(normalize_url(settings.database_url), embedded=False)
    return start_embedded(settings)


def ensure_database(target: DatabaseTarget) -> None:
    """Create the target's database when it does not exist (needs CREATEDB on the server)."""
    dbname = target.parts["dbname"]
    try:
        psycopg.connect(target.url, connect_timeout=10).close()
        return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    admin = target.with_database("postgres")
    with psycopg.connect(admin.url, autocommit=True, connect_timeout=10) as conn:
        try:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
        except psycopg.errors.DuplicateDatabase:
            pass
    log.info("created database %s", dbname)


def tool_environment(target: DatabaseTarget, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for dbt (profiles.yml) and Dagster (dagster.yaml): the POSTGRES_* namespace."""
    import os

    env = dict(os.environ if base is None else base)
    parts = target.parts
    env.update(
        POSTGRES_HOST=parts["host"],
        POSTGRES_PORT=parts["port"],
        POSTGRES_USER=parts["user"],
        POSTGRES_PASSWORD=parts["password"],
        POSTGRES_DB=parts["dbname"],
        DATABASE_URL=target.url,
    )
    return env


def write_pool(settings: Settings, url: str, application_name: str = "ingest_service") -> AsyncConnectionPool:
    """The write path's connection pool (the API's, and each `iot-platform writer`'s), not yet open."""
    timeout_ms = int(settings.request_timeout_seconds * 1000)
    return AsyncConnectionPool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        open=False,
        # autocommit: a group of the common kind is one statement (ingest.write_items), atomic on
        # its own; writes of several statements open a transaction explicitly.
        kwargs={
            "options": f"-c statement_timeout={timeout_ms}",
            "application_name": application_name,
            "autocommit": True,
        },
        timeout=settings.request_timeout_seconds,
    )
