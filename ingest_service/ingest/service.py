"""The ingest service: validates requests and hands them to writers that commit them in groups.

Group commit: a dispatcher takes the first waiting request, gathers more for up to
`group_commit_window_ms` (or `group_commit_max_items`), then waits for one of `writers` free
transaction slots; while every slot is busy, requests keep joining the group, so groups grow with
the load instead of queueing behind one another. Each group is written in one transaction, and
every request is answered only after the transaction holding its rows has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest_service.core.config import Settings
from ingest_service.core.observability import METRICS
from ingest_service.ingest.body import BodyItem
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.ratelimit import FAILURE_REASONS, FailedStartupLimiter
from ingest_service.ingest.reasons import Reason
from ingest_service.ingest.results import ItemResult, PendingItem, RequestMeta
from ingest_service.ingest.validation import Rejection, Startup, Telemetry, validate
from ingest_service.ingest.writer import DeviceCache, needs_transaction, write_batch

log = logging.getLogger(__name__)
CATALOG_MISS_REFRESH_SECONDS = 1.0


class DatabaseUnavailable(Exception):
    """The database could not take the request; nothing of it was stored."""


class _Job:
    """One request's items, waiting for (or in) a group transaction. Only a waiting job can expire:
    once taken into a group it has left `IngestService._waiting`, which the expiry sweep reads."""

    __slots__ = ("future", "items", "queued_at")

    def __init__(self, items: list[PendingItem], loop: asyncio.AbstractEventLoop) -> None:
        self.items = items
        self.future: asyncio.Future[list[ItemResult]] = loop.create_future()
        self.queued_at = loop.time()


class IngestService:
    def __init__(self, pool: AsyncConnectionPool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self.catalog = RecordTypeCatalog()
        self.devices = DeviceCache()
        # Requests waiting for a group, oldest first; the dispatcher sleeps on `_arrived` when empty.
        self._waiting: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._writers: list[asyncio.Task[None]] = []  # the dispatcher and the expiry sweep
        self._commits: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(1, settings.writers))
        self._catalog_lock = asyncio.Lock()
        self.startup_limiter = FailedStartupLimiter(
            settings.failed_startups_per_serial, settings.failed_startup_window_seconds
        )

    async def start(self) -> None:
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            await self.refresh_catalog()
        self._writers = [
            asyncio.create_task(self._dispatch_loop(), name="ingest-dispatcher"),
            asyncio.create_task(self._expire_loop(), name="ingest-expiry"),
        ]

    async def stop(self) -> None:
        """Finish what is queued and in flight, then stop the dispatcher."""
        while self._waiting:
            await asyncio.sleep(0.01)
        await asyncio.gather(*self._commits, return_exceptions=True)
        for task in self._writers:
            task.cancel()
        await asyncio.gather(*self._writers, return_exceptions=True)
        await asyncio.gather(*self._commits, return_exceptions=True)

    async def refresh_catalog(self, if_older_than: float | None = None) -> None:
        async with self._catalog_lock:
            # Requests that queued on the lock behind a refresh do not repeat it.
            if if_older_than is not None and self.catalog.age() <= if_older_than:
                return
            async with self.pool.connection(timeout=self.settings.request_timeout_seconds) as conn:
                await self.catalog.refresh(conn)

    async def _catalog_for(self, items: list[BodyItem]) -> None:
        """Reload record types when they are stale, or when a request names a type we do not know."""
        stale = self.catalog.age() > self.settings.record_type_refresh_seconds
        unknown = False
        if not stale:
            get = self.catalog.get
            for item in items:
                event = item.parsed
                if type(event) is dict:
                    name = event.get("event_type")
                    if type(name) is str and name != "device_startup" and get(name) is None:
                        unknown = True
                        break
        if stale or (unknown and self.catalog.age() > CATALOG_MISS_REFRESH_SECONDS):
            try:
                await self.refresh_catalog(
                    self.settings.record_type_refresh_seconds if stale else CATALOG_MISS_REFRESH_SECONDS
                )
            except (psycopg.Error, PoolTimeout) as exc:
                if not len(self.catalog):
                    raise DatabaseUnavailable(str(exc)) from exc

    def classify(self, items: list[BodyItem], meta: RequestMeta) -> list[PendingItem]:
        now = time.time()
        s = self.settings
        pending = []
        for index, item in enumerate(items):
            if item.parse_error is not None:
                reason, detail = item.parse_error
                outcome: Telemetry | Startup | Rejection = Rejection("invalid", reason, detail)
            else:
                outcome = validate(
                    item.parsed,
                    self.catalog,
                    secret=s.provision_secret,
                    now=now,
                    max_skew=s.max_clock_skew_seconds,
                    replay_window=s.startup_replay_window_seconds,
                )
                outcome = self._limit_startups(item.parsed, outcome)
            pending.append(PendingItem(meta, index, item, outcome))
        return pending

    def _limit_startups(
        self, event: object, outcome: Telemetry | Startup | Rejection
    ) -> Telemetry | Startup | Rejection:
        """Refuse every startup of a serial with too many recent failures; count new failures."""
        if not isinstance(event, dict) or event.get("event_type") != "device_startup":
            return outcome
        serial = event.get("serial")
        if not isinstance(serial, str):
            return outcome
        wait = self.startup_limiter.retry_after(serial)
        if wait is not None:
            return Rejection(
                "rate_limited",
                Reason.TOO_MANY_FAILED_STARTUPS,
                f"too many failed startups for this serial; retry in {wait:.0f} s",
                "device_startup",
            )
        if isinstance(outcome, Rejection) and outcome.reason in FAILURE_REASONS:
            self.startup_limiter.record_failure(serial)
        return outcome

    async def ingest(self, items: list[BodyItem], meta: RequestMeta) -> list[ItemResult]:
        await self._catalog_for(items)
        loop = asyncio.get_running_loop()
        job = _Job(self.classify(items, meta), loop)
        self._waiting.append(job)
        self._arrived.set()
        return await job.future

    async def _expire_loop(self) -> None:
        """Fail requests that waited too long for a group. A job whose transaction is running
        (bounded by statement_timeout) is waited for: the answer must say what it did. A job still
        waiting is failed, and writers skip it: it is never stored after its client was told to
        retry. One sweep of the oldest waiters per tick instead of a timer per request."""
        timeout = self.settings.request_timeout_seconds
        tick = min(0.1, timeout / 10)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            deadline = loop.time() - timeout
            for job in self._waiting:  # oldest first: stop at the first one still in time
                if job.queued_at > deadline:
                    break
                if not job.future.done():
                    job.future.set_exception(DatabaseUnavailable("timed out waiting for the database"))

    def _drain(self, jobs: list[_Job], count: int) -> int:
        """Move waiting requests into the group, up to the item cap (one request may pass it)."""
        waiting, cap = self._waiting, self.settings.group_commit_max_items
        while count < cap and waiting:
            job = waiting.popleft()
            jobs.append(job)
            count += len(job.items)
        return count

    async def _gather(self) -> list[_Job]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        jobs = [self._waiting.popleft()]
        count = self._drain(jobs, len(jobs[0].items))
        # The window counts from the first request's arrival: under load, the time the event loop
        # took to reach the dispatcher has already gathered the group, and waiting longer would
        # only leave the loop idle while every client waits.
        wait = self.settings.group_commit_window_ms / 1000 - (asyncio.get_running_loop().time() - jobs[0].queued_at)
        if count < self.settings.group_commit_max_items and wait > 0:
            # One timer per group (not one per request): let concurrent requests arrive, then take them all.
            await asyncio.sleep(wait)
            count = self._drain(jobs, count)
        await self._slots.acquire()
        # Requests that arrived while every writer was busy join this group.
        self._drain(jobs, count)
        METRICS.queue_depth.set(len(self._waiting))
        return [job for job in jobs if not job.future.done()]

    async def _dispatch_loop(self) -> None:
        while True:
            jobs = await self._gather()
            if not jobs:
                self._slots.release()
                continue
            task = asyncio.create_task(self._commit_and_release(jobs))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    async def _commit_and_release(self, jobs: list[_Job]) -> None:
        try:
            await self._commit(jobs)
        except Exception as exc:  # never leave a request without an answer
            log.exception("commit failed")
            self._fail(jobs, DatabaseUnavailable(f"the write failed: {exc}"[:300]))
        finally:
            self._slots.release()

    async def _commit(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        started = time.perf_counter()
        try:
            results = await self._write(items)
        except DatabaseUnavailable as exc:
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        except Exception:
            if len(jobs) > 1:  # isolate the request that fails from the others in its group
                for job in jobs:
                    await self._commit([job])
                return
            log.exception("write failed; storing the request's items as errors")
            results = await self._store_as_errors(items)
            if results is None:
                self._fail(jobs, DatabaseUnavailable("the database refused the request"))
                return
        METRICS.commit_seconds.observe(time.perf_counter() - started)
        METRICS.commit_items.observe(len(items))
        offset = 0
        for job in jobs:
            n = len(job.items)
            if not job.future.done():
                job.future.set_result(results[offset : offset + n])
            offset += n

    @staticmethod
    def _fail(jobs: list[_Job], exc: Exception) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)

    async def _write(self, items: list[PendingItem]) -> list[ItemResult]:
        for attempt in (1, 2):
            try:
                async with self.pool.connection(timeout=self.settings.request_timeout_seconds) as conn:
                    if conn.autocommit and not needs_transaction(items, self.devices):
                        # One statement, atomic on its own: one round trip, no BEGIN/COMMIT.
                        results, touched = await write_batch(conn, items, self.devices)
                    else:
                        async with conn.transaction():
                            results, touched = await write_batch(conn, items, self.devices)
                now = time.monotonic()
                for device_id in touched:
                    self.devices.touched[device_id] = now
                return results
            except (psycopg.OperationalError, PoolTimeout) as exc:
                raise DatabaseUnavailable(str(exc)) from exc
            except psycopg.errors.IntegrityError:
                # A concurrent writer provisioned the same serial, or the device cache is stale:
                # start over with what the database now holds.
                self.devices.clear()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _store_as_errors(self, items: list[PendingItem]) -> list[ItemResult] | None:
        """Last resort for a request the write path cannot store: keep every body, as text, with an error."""
        fallback = []
        for item in items:
            body = item.body
            text = body.payload if body.payload is not None else body.body_text
            rejection = Rejection("error", Reason.INTERNAL_ERROR, "the item could not be stored as sent; kept as text")
            fallback.append(
                PendingItem(item.meta, item.batch_index, BodyItem(None, text, body.body_bytes, None), rejection)
            )
        try:
            return await self._write(fallback)
        except Exception:
            log.exception("could not store the request even as errors")
            return None
