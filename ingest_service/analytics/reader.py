"""The analytics reader: a pool of its own whose connections run as the read-only analyst role.

Each connection starts with `role=<ANALYTICS_ROLE>` (iot_analyst: migration 0002 grants it SELECT on
the analytics schema only), `default_transaction_read_only=on` and a statement timeout; queries name
their relations fully (from the dbt manifest, ingest_service.analytics.catalog). The login is
DATABASE_URL's (or the embedded server's), or ANALYTICS_DATABASE_URL's when set (a dedicated login
that is a member of the role). Database failures become `AnalyticsUnavailable` with a message that
says what to do: a relation that dbt has not built yet (and when the first build is due), a missing
role or grant, a timeout; never a bare 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors, sql
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import JSONResponse

from ingest_service.core.config import Settings
from ingest_service.core.database import NO_JIT, DatabaseTarget, connection_pool, normalize_url

log = logging.getLogger(__name__)


class AnalyticsUnavailable(Exception):
    """The analytics schema cannot answer; `reason` is a stable code, `detail` says what to do."""

    def __init__(self, reason: str, detail: str, status_code: int = 503, **extra: Any) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.status_code = status_code
        self.extra = extra  # more fields of the answer's body


def first_build_at(settings: Settings) -> datetime | None:
    due = settings.analytics_first_build_at
    return due.replace(tzinfo=UTC) if due is not None and due.tzinfo is None else due


def not_built(settings: Settings, what: str) -> AnalyticsUnavailable:
    """503 `analytics_not_built`: `what` ("metric_side_switches is", ...) not built by dbt yet, and when
    the first build is due (ANALYTICS_FIRST_BUILD_AT, which `make up` sets) or what builds it."""
    due = first_build_at(settings)
    if due is not None:
        at = f"{due.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        when = f"first build at {at}" if due > datetime.now(UTC) else f"first build due at {at} (it may still run)"
    else:
        when = "Dagster's analytics_hourly_schedule builds it, or `iot-platform dbt build` now"
    return AnalyticsUnavailable(
        "analytics_not_built",
        f"{what} not built yet, {when}",
        first_build_at=due.isoformat() if due is not None else None,
    )


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    timeout_ms = int(settings.analytics_statement_timeout_seconds * 1000)
    options = ["-c default_transaction_read_only=on", f"-c statement_timeout={timeout_ms}", NO_JIT]
    if settings.analytics_role:
        options.append(f"-c role={settings.analytics_role}")
    return {"options": " ".join(options), "application_name": "ingest_service_analytics", "autocommit": True}


def analytics_url(settings: Settings, target: DatabaseTarget) -> str:
    return normalize_url(settings.analytics_database_url) if settings.analytics_database_url else target.url


class AnalyticsReader:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
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

    async def fetch(self, query: sql.Composed, params: Sequence[Any] = (), *, reads: str) -> list[dict[str, Any]]:
        """Run one read-only query; `reads` names the relation for error messages."""
        return (await self.fetch_with_columns(query, params, reads=reads))[1]

    async def fetch_with_columns(
        self, query: sql.Composed, params: Sequence[Any] = (), *, reads: str
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
            raise not_built(self.settings, f"{reads} is") from exc
        except errors.InsufficientPrivilege as exc:
            _log_database_error(exc)
            raise AnalyticsUnavailable(
                "not_permitted",
                f"role {self.settings.analytics_role} may not read {reads}: apply the migrations "
                f"(`iot-platform migrate`) and build dbt as the schema owner so the default privileges apply",
            ) from exc
        except errors.UndefinedColumn as exc:
            _log_database_error(exc)
            raise AnalyticsUnavailable(
                "schema_mismatch",
                f"{reads} does not have the columns the dbt manifest lists: rebuild dbt (`iot-platform dbt build`)",
            ) from exc
        except errors.QueryCanceled as exc:
            raise AnalyticsUnavailable(
                "query_timeout",
                f"the query on {reads} took longer than "
                f"{self.settings.analytics_statement_timeout_seconds:g} s: narrow the time window or page size",
            ) from exc
        except psycopg.OperationalError as exc:
            _log_database_error(exc)
            raise AnalyticsUnavailable("database_unavailable", "the analytics database is unavailable, retry") from exc

    async def _diagnose(self) -> str:
        """The pool gave no connection in time: connect once directly to say why (a missing role...).
        The database's own text goes to the log, never into the answer."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, connect_timeout=3, **self._kwargs)
        except psycopg.Error as exc:
            _log_database_error(exc)
            text = str(exc)
            if "role" in text and "does not exist" in text or "permission denied to set role" in text:
                return (
                    f"the analytics role {self.settings.analytics_role} cannot be used: it comes with migration "
                    f"0002 (run `iot-platform migrate`), or set ANALYTICS_ROLE / ANALYTICS_DATABASE_URL"
                )
            return "the analytics database is unavailable, retry"
        await conn.close()
        return "the analytics database is busy: no connection free in time, retry"


def _log_database_error(exc: BaseException) -> None:
    log.warning("analytics query failed: %s: %s", type(exc).__name__, str(exc).strip()[:1000])


async def analytics_error_response(request: Request, exc: AnalyticsUnavailable) -> JSONResponse:
    """The JSON body of every analytics refusal: {"status": "error", "reason": ..., "detail": ...}."""
    headers = {}
    if exc.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif exc.status_code == 503:
        headers["Retry-After"] = "5"
    body = {"status": "error", "reason": exc.reason, "detail": exc.detail, **exc.extra}
    return JSONResponse(body, status_code=exc.status_code, headers=headers)
