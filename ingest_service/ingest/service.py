"""The ingest service: the one object every door calls (see the package docstring for the door API).

It wires the pieces of the write path together: admission (admission.py), group commit
(groupcommit.py), and per group the writer (writer.py: decide, write, answer). What happens to a
group the write path cannot store is decided here: a failing request is isolated from the others
of its group, then stored with every item kept as text (`internal_error`); when the database
cannot be reached, the requests fail with `DatabaseUnavailable` and nothing of them is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest_service.core.config import Settings
from ingest_service.core.observability import METRICS
from ingest_service.ingest.admission import Admission, DatabaseUnavailable
from ingest_service.ingest.answer import Answer
from ingest_service.ingest.body import BodyItem
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.decide import Rules
from ingest_service.ingest.delivery import Delivery, DeliveryKeyReused, fingerprint
from ingest_service.ingest.groupcommit import GroupCommit
from ingest_service.ingest.writer import DeviceCache, Request, Writer

log = logging.getLogger(__name__)
# How often expired delivery keys and failed startups past the limiter's window are deleted.
SWEEP_INTERVAL_SECONDS = 60.0


class IngestService:
    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.admission = Admission(pool, settings)
        self.writer = Writer(
            Rules.from_settings(settings, self.admission.catalog), settings.delivery_key_window_seconds
        )
        self.groups: GroupCommit[Request, Answer] = GroupCommit(self._commit, settings, DatabaseUnavailable)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def catalog(self) -> RecordTypeCatalog:
        return self.admission.catalog

    @property
    def devices(self) -> DeviceCache:
        return self.writer.devices

    async def start(self) -> None:
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            await self.admission.refresh_catalog()
        self.groups.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="ingest-sweep")

    async def stop(self) -> None:
        """Finish what is queued and in flight, then stop."""
        await self.groups.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def ingest(self, items: list[BodyItem], delivery: Delivery) -> Answer:
        """Store a request's items; the answer comes once they are committed. Raises
        DatabaseUnavailable or DeliveryKeyReused, and then nothing of the request was stored."""
        await self.admission.admit(items)
        request = Request(items, delivery, fingerprint(items) if delivery.key is not None else None)
        return await self.groups.submit(request, len(items))

    async def recorded(self, door: str, key: str) -> Answer | None:
        """The stored results of a delivery key (within its window), or None when the key is not
        recorded: what a receipt resolves to once its request is stored. Raises DatabaseUnavailable."""
        try:
            async with self.pool.connection(timeout=self.settings.request_timeout_seconds) as conn:
                record = (await self.writer.recorded(conn, [(door, key)])).get((door, key))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        return None if record is None else Answer(record.results, replayed=True)

    async def _commit(self, requests: list[Request]) -> list[Answer | Exception]:
        """Write one group; each request's answer, or the exception its door gets."""
        started = time.perf_counter()
        try:
            answers: list[Answer | Exception] = list(await self._store(requests))
        except DatabaseUnavailable as exc:
            return [exc] * len(requests)
        except Exception:
            if len(requests) > 1:  # isolate the request that fails from the others in its group
                return [(await self._commit([request]))[0] for request in requests]
            log.exception("write failed; storing the request's items as errors")
            try:
                answers = list(await self._store(requests, unstorable=True))
            except Exception:
                log.exception("could not store the request even as errors")
                return [DatabaseUnavailable("the database refused the request")]
        METRICS.commit_seconds.observe(time.perf_counter() - started)
        METRICS.commit_items.observe(sum(len(request.items) for request in requests))
        return answers

    async def _store(self, requests: list[Request], unstorable: bool = False) -> list[Answer | DeliveryKeyReused]:
        try:
            async with self.pool.connection(timeout=self.settings.request_timeout_seconds) as conn:
                return await self.writer.store(conn, requests, unstorable=unstorable)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise DatabaseUnavailable(str(exc)) from exc

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
            try:
                async with self.pool.connection(timeout=self.settings.request_timeout_seconds) as conn:
                    await self.writer.sweep(conn)
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("sweep of expired delivery keys and failed startups skipped: %s", exc)
