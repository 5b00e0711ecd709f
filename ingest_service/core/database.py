"""Which PostgreSQL to use: `DATABASE_URL`, or the embedded server (pgserver) under the data folder.

The embedded server listens on a unix socket inside its data folder and keeps running after the
process that started it exits, so the API, dbt, Dagster and the tests can share it;
`iot-platform db stop` stops it.
"""

from __future__ import annotations

import fcntl
import logging
import select
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.pq import ConnStatus, TransactionStatus
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
    # Processes that start together (pytest-xdist workers, `make up`'s children) would otherwise
    # race to initdb the same folder on a fresh machine, and all but one fail.
    with open(pgdata.parent / "pg.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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


# The session option of every reader of history (dbt, Dagster, the analytics API): no JIT. Over the
# day partitions or a big mart the planner's cost passes jit_above_cost, and on a server built with
# LLVM compiling costs more than it saves: 1-2 s on dbt's window queries of milliseconds (where the
# planner overestimates: a lateral join, a stale histogram), 1.4 s against 0.8 s for an analytics
# filter without an index on the 10 M-row ingest_parse.
NO_JIT = "-c jit=off"


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
    # libpq reads PGOPTIONS: dbt's and Dagster's sessions read history too (NO_JIT).
    if "jit=" not in env.get("PGOPTIONS", ""):
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {NO_JIT}".strip()
    return env


# A connection attempt that fails is retried by psycopg_pool with a growing delay (1 s, 2 s, 4 s...):
# after a long outage the pool would come back minutes late. Attempts give up after this long
# instead; the next request that needs a connection starts a fresh attempt at once.
POOL_RECONNECT_TIMEOUT_SECONDS = 1.0


def connection_pool(url: str, **kwargs: Any) -> AsyncConnectionPool:
    """An AsyncConnectionPool (not opened) that survives a database restart: every connection it
    hands out is checked first, and the first dead one found makes it check all its idle ones at
    once, so a restart costs one reconnect, not a failed request (or a back-off) per pooled connection.
    """
    pool: AsyncConnectionPool

    async def check(conn: psycopg.AsyncConnection) -> None:
        if connection_looks_alive(conn):
            return
        await conn.close()  # so the pool discards it (and opens another) instead of keeping it
        await pool.check()  # its idle peers died with it: replace them all now, not one per request
        raise psycopg.OperationalError("the pooled connection was closed by the server")

    pool = AsyncConnectionPool(url, check=check, reconnect_timeout=POOL_RECONNECT_TIMEOUT_SECONDS, **kwargs)
    return pool


def write_pool(settings: Settings, url: str, application_name: str) -> AsyncConnectionPool:
    """The write path's pool, the same for every door (the API, the MQTT bridge, the JetStream
    writer): autocommit, because a group of the common kind is one statement
    (ingest.write_items), atomic on its own, and writes of several statements open a transaction
    explicitly; the statement timeout is the request timeout."""
    return connection_pool(
        url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        open=False,
        kwargs={
            "options": f"-c statement_timeout={int(settings.request_timeout_seconds * 1000)}",
            "application_name": application_name,
            "autocommit": True,
        },
        timeout=settings.request_timeout_seconds,
    )


def connection_looks_alive(conn: psycopg.AsyncConnection) -> bool:
    """Whether an idle pooled connection still works, without a round trip. An idle connection has
    nothing to read: a server that shut down or restarted sent its last error and closed the socket,
    so anything readable (or a hang-up) means it is gone. One poll(2), no query."""
    pgconn = conn.pgconn
    if conn.closed or pgconn.status != ConnStatus.OK or pgconn.transaction_status != TransactionStatus.IDLE:
        return False
    poller = select.poll()  # not select(): descriptors beyond 1024 are normal in a busy API
    poller.register(pgconn.socket, select.POLLIN)
    return not poller.poll(0)
