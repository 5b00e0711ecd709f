"""The analytics reader: a pool of its own whose connections run as the read-only analyst role.

Each connection starts with `role=<ANALYTICS_ROLE>` (iot_analyst: migration 0002 grants it SELECT on
the analytics schema only), `default_transaction_read_only=on`, a statement timeout and
`search_path=<ANALYTICS_SCHEMA>`. The login is DATABASE_URL's (or the embedded server's), or
ANALYTICS_DATABASE_URL's when set (a dedicated login that is a member of the role).
Database failures become `AnalyticsUnavailable` with a message that says what to do: a relation
that dbt has not built yet, a missing role or grant, a timeout; never a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget, connection_pool, normalize_url

log = logging.getLogger(__name__)


class AnalyticsUnavailable(Exception):
    """The analytics schema cannot answer; `reason` is a stable code, `detail` says what to do."""

    def __init__(self, reason: str, detail: str, status_code: int = 503) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status_code = status_code


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    timeout_ms = int(settings.analytics_statement_timeout_seconds * 1000)
    options = [
        "-c default_transaction_read_only=on",
        f"-c statement_timeout={timeout_ms}",
        f"-c search_path={settings.analytics_schema}",
    ]
    if settings.analytics_role:
        options.append(f"-c role={settings.analytics_role}")
    return {"options": " ".join(options), "application_name": "ingest_service_analytics", "autocommit": True}


def analytics_url(settings: Settings, target: DatabaseTarget) -> str:
    return normalize_url(settings.analytics_database_url) if settings.analytics_database_url else target.url


class AnalyticsReader:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.schema = settings.analytics_schema
        self._url = url
        self._kwargs = connection_kwargs(settings)
        self.pool = connection_pool(
            url,
            min_size=0,  # connects on first use: an unused or not-yet-migrated analytics side stays quiet
            max_size=settings.analytics_pool_max_size,
            open=False,
            kwargs=self._kwargs,
            timeout=min(5.0, settings.request_timeout_seconds),
            name="analytics",
        )

    async def open(self) -> None:
        # Not waiting: the ingest API starts even when the analytics role is not there yet.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    def relation(self, name: str) -> sql.Composable:
        return sql.Identifier(self.schema, name)

    async def fetch(self, query: sql.Composable, params: Sequence[Any] = (), *, reads: str) -> list[dict[str, Any]]:
        """Run one read-only query; `reads` names the relation for error messages."""
        return (await self.fetch_with_columns(query, params, reads=reads))[1]

    async def fetch_with_columns(
        self, query: sql.Composable, params: Sequence[Any] = (), *, reads: str
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """Column names (also when no row comes back) and rows of one read-only query."""
        try:
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(query, params)
                columns = [d.name for d in cur.description or []]
                return columns, await cur.fetchall()
        except PoolTimeout as exc:
            raise AnalyticsUnavailable("database_unavailable", await self._diagnose()) from exc
        except (errors.UndefinedTable, errors.InvalidSchemaName) as exc:
            raise AnalyticsUnavailable(
                "not_built",
                f"{self.schema}.{reads} does not exist yet: dbt has not built it on this database "
                f"(run `iot-platform dbt build`; Dagster builds it on its schedule)",
            ) from exc
        except errors.InsufficientPrivilege as exc:
            raise AnalyticsUnavailable(
                "not_permitted",
                f"role {self.settings.analytics_role} may not read {self.schema}.{reads}: apply the migrations "
                f"(`iot-platform migrate`) and build dbt as the schema owner so the default privileges apply "
                f"({_first_line(exc)})",
            ) from exc
        except errors.UndefinedColumn as exc:
            raise AnalyticsUnavailable(
                "schema_mismatch",
                f"{self.schema}.{reads} does not have the columns this API reads: rebuild dbt "
                f"(`iot-platform dbt build`) from this version ({_first_line(exc)})",
            ) from exc
        except errors.QueryCanceled as exc:
            raise AnalyticsUnavailable(
                "query_timeout",
                f"the query on {self.schema}.{reads} took longer than "
                f"{self.settings.analytics_statement_timeout_seconds:g} s: narrow the time window or page size",
            ) from exc
        except psycopg.OperationalError as exc:
            raise AnalyticsUnavailable("database_unavailable", f"database unavailable: {_first_line(exc)}") from exc

    async def _diagnose(self) -> str:
        """The pool gave no connection in time: connect once directly to say why (a missing role...)."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, connect_timeout=3, **self._kwargs)
        except psycopg.Error as exc:
            text = _first_line(exc)
            if "role" in text and "does not exist" in text or "permission denied to set role" in text:
                text += (
                    " (the analytics role comes with migration 0002: run `iot-platform migrate`, or set "
                    "ANALYTICS_ROLE / ANALYTICS_DATABASE_URL)"
                )
            return f"analytics database unavailable: {text}"
        await conn.close()
        return "analytics database busy: no connection free in time, retry"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


async def analytics_error_response(request: Request, exc: AnalyticsUnavailable) -> JSONResponse:
    """The JSON body of every analytics refusal: {"status": "error", "reason": ..., "detail": ...}."""
    headers = {}
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif exc.status_code == 503:
        headers["Retry-After"] = "5"
    body = {"status": "error", "reason": exc.reason, "detail": exc.detail}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)
