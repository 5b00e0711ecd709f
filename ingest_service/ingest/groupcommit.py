"""Group commit: concurrent requests share a write, and each is answered once that write is done.

A dispatcher takes the first waiting request, gathers more for up to `group_commit_window_ms`
counted from that request's arrival (or until `group_commit_max_items`), then waits for one of
`writers` free slots; while every slot is busy, requests keep joining the group, so groups grow
with the load instead of queueing behind one another. Each group is handed to `commit`, which
answers each of its requests (a result or an exception); the slot is free again once it returns.

A request waits for a slot at most `request_timeout_seconds`: then it fails with the `unavailable`
exception and is never written (its client was told to retry). A request whose group is being
written is waited for, since the answer must say what was stored (the write is bounded by the
statement timeout).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from ingest_service.core.config import Settings
from ingest_service.core.observability import METRICS

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT")
AnswerT = TypeVar("AnswerT")


class Job(Generic[RequestT, AnswerT]):
    """One request waiting for (or in) a group. Only a waiting job can expire: once taken into a
    group it has left `GroupCommit._waiting`, which the expiry sweep reads."""

    __slots__ = ("future", "queued_at", "request", "size")

    def __init__(self, request: RequestT, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.size = size
        self.future: asyncio.Future[AnswerT] = loop.create_future()
        self.queued_at = loop.time()


Commit = Callable[[list[RequestT]], Awaitable[list[AnswerT | Exception]]]


class GroupCommit(Generic[RequestT, AnswerT]):
    def __init__(
        self, commit: Commit[RequestT, AnswerT], settings: Settings, unavailable: Callable[[str], Exception]
    ) -> None:
        self.commit = commit
        self.window = settings.group_commit_window_ms / 1000
        self.max_items = settings.group_commit_max_items
        self.timeout = settings.request_timeout_seconds
        self.unavailable = unavailable  # what a request that could not be written fails with
        # Requests waiting for a group, oldest first; the dispatcher sleeps on `_arrived` when empty.
        self._waiting: deque[Job[RequestT, AnswerT]] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, settings.writers))
        self._tasks: list[asyncio.Task[None]] = []  # the dispatcher and the expiry sweep
        self._commits: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="ingest-dispatcher"),
            asyncio.create_task(self._expire_loop(), name="ingest-expiry"),
        ]

    async def stop(self) -> None:
        """Finish what is queued and in flight, then stop the dispatcher."""
        while self._waiting:
            await asyncio.sleep(0.01)
        await asyncio.gather(*self._commits, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._commits, return_exceptions=True)

    async def submit(self, request: RequestT, size: int) -> AnswerT:
        """Queue a request of `size` items and wait for its answer (raised when it is an exception)."""
        job: Job[RequestT, AnswerT] = Job(request, size, asyncio.get_running_loop())
        self._waiting.append(job)
        self._arrived.set()
        return await job.future

    async def _expire_loop(self) -> None:
        """One sweep of the oldest waiters per tick, instead of a timer per request."""
        tick = min(0.1, self.timeout / 10)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            deadline = loop.time() - self.timeout
            for job in self._waiting:  # oldest first: stop at the first one still in time
                if job.queued_at > deadline:
                    break
                if not job.future.done():
                    job.future.set_exception(self.unavailable("timed out waiting for the database"))

    def _drain(self, jobs: list[Job[RequestT, AnswerT]], count: int) -> int:
        """Move waiting requests into the group, up to the item cap (one request may pass it)."""
        waiting, cap = self._waiting, self.max_items
        while count < cap and waiting:
            job = waiting.popleft()
            jobs.append(job)
            count += job.size
        return count

    async def _gather(self) -> list[Job[RequestT, AnswerT]]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        jobs = [self._waiting.popleft()]
        count = self._drain(jobs, jobs[0].size)
        # The window counts from the first request's arrival: under load, the time the event loop
        # took to reach the dispatcher has already gathered the group, and waiting longer would
        # only leave the loop idle while every client waits.
        wait = self.window - (asyncio.get_running_loop().time() - jobs[0].queued_at)
        if count < self.max_items and wait > 0:
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

    async def _commit_and_release(self, jobs: list[Job[RequestT, AnswerT]]) -> None:
        try:
            answers: list[AnswerT | Exception] = await self.commit([job.request for job in jobs])
        except Exception as exc:  # never leave a request without an answer
            log.exception("commit failed")
            answers = [self.unavailable(f"the write failed: {exc}"[:300])] * len(jobs)
        finally:
            self._slots.release()
        for job, answer in zip(jobs, answers, strict=True):
            if job.future.done():
                continue
            if isinstance(answer, Exception):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer)
