"""Admission: a request joins a group only once the record-type catalog can judge it.

Record types are rows (`ingest.record_type`), so the catalog is reloaded when it is older than
`RECORD_TYPE_REFRESH_SECONDS`, and at most once a second when a request names a type it does not
know (a type registered a moment ago is accepted without a restart). With no catalog at all (the
database has not been reached since start), the request is refused and nothing is stored
(`DatabaseUnavailable`: the door answers "retry later").
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest_service.core.config import Settings
from ingest_service.ingest.body import BodyItem
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.validation import STARTUP

CATALOG_MISS_REFRESH_SECONDS = 1.0


class DatabaseUnavailable(Exception):
    """The database could not take the request; nothing of it was stored."""


class Admission:
    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.catalog = RecordTypeCatalog()
        self._catalog_lock = asyncio.Lock()

    async def refresh_catalog(self, if_older_than: float | None = None) -> None:
        async with self._catalog_lock:
            # Requests that queued on the lock behind a refresh do not repeat it.
            if if_older_than is not None and self.catalog.age() <= if_older_than:
                return
            async with self.pool.connection(timeout=self.settings.request_timeout_seconds) as conn:
                await self.catalog.refresh(conn)

    async def admit(self, items: Sequence[BodyItem]) -> None:
        """Reload record types when they are stale, or when a request names a type we do not know."""
        refresh_after = self.settings.record_type_refresh_seconds
        stale = self.catalog.age() > refresh_after
        if not stale:
            if self.catalog.age() <= CATALOG_MISS_REFRESH_SECONDS or not self._names_unknown_type(items):
                return
            refresh_after = CATALOG_MISS_REFRESH_SECONDS
        try:
            await self.refresh_catalog(refresh_after)
        except (psycopg.Error, PoolTimeout) as exc:
            if not len(self.catalog):
                raise DatabaseUnavailable(str(exc)) from exc

    def _names_unknown_type(self, items: Sequence[BodyItem]) -> bool:
        get = self.catalog.get
        for item in items:
            event = item.parsed
            if type(event) is dict:
                name = event.get("event_type")
                if type(name) is str and name != STARTUP and get(name) is None:
                    return True
        return False
