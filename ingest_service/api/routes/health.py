"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

import psycopg
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from psycopg_pool import PoolTimeout

from ingest_service.api.routes.receipts import buffer_exposition, buffer_readiness
from ingest_service.api.schemas import Health, Readiness
from ingest_service.core.migrate import head_revision
from ingest_service.core.observability import exposition

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)
HEAD = head_revision()
# How long readiness waits for a connection, and for the ledger's lock.
READY_TIMEOUT_SECONDS = 1.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> Response:
    """The database is reachable, migrated to the schema this build expects, and the ledger takes
    writes: a lock that would block an insert into raw_record (or an exhausted pool) means unready.
    In buffered mode the API needs only the buffer: ready while JetStream takes requests, with the
    backlog (lag, redeliveries, dead letters) in the answer."""
    if request.app.state.buffer is not None:
        return await buffer_readiness(request.app.state.buffer)
    pool = request.app.state.pool
    try:
        async with pool.connection(timeout=READY_TIMEOUT_SECONDS) as conn, conn.transaction():
            await conn.execute(f"set local lock_timeout = {int(READY_TIMEOUT_SECONDS * 1000)}")
            cur = await conn.execute("select version_num from ingest.alembic_version")
            row = await cur.fetchone()
            # the lock every insert into the ledger takes; the transaction ends right away
            await conn.execute("lock table ingest.raw_record in row exclusive mode")
    except PoolTimeout as exc:
        return _unready("no database connection in time: the database is unreachable or every connection is busy", exc)
    except psycopg.errors.LockNotAvailable as exc:
        return _unready("the ledger is locked: inserts would wait", exc)
    except Exception as exc:  # any other failure here means: not ready
        return _unready("the database is unreachable", exc)
    if row is None or row[0] != HEAD:
        found = row[0] if row else None
        return _unready(f"the schema is not at the revision this build expects ({HEAD}): run the migrations", found)
    return JSONResponse({"status": "ready", "detail": f"schema {HEAD}"})


def _unready(detail: str, cause: object) -> JSONResponse:
    """503 in the product's words; what the database said goes to the log (with the request id)."""
    log.warning("not ready: %s", detail, extra={"fields": {"cause": str(cause)[:1000]}})
    return JSONResponse({"status": "unready", "detail": detail}, 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: requests, items by status and reason, latencies."""
    body = exposition()
    if request.app.state.buffer is not None:
        body += await buffer_exposition(request.app.state.buffer)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
