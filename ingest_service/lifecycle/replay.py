"""Replay: ledger rows whose current outcome is an error, decided again with today's catalog.

The common case is a rollout: new firmware sends an event type the catalog does not know yet, or a
range turns out too strict; the operator inserts the record type or widens the range, then replays
the rejected rows. Each row goes through the write path's own stages (decide.check, decide.needs,
decide.decide: `Writer.replay`) and is written by `ingest.replay_items()` (migration 0007):

- a row that now passes becomes a fact (or a duplicate of a fact stored meanwhile);
- a row that still fails with the same reason is left as it is; with another reason it gets a
  `replay_error` row;
- the error a row had is never rewritten: an `outcome_supersession` row says which run replaced it
  and by what. The ledger row itself is never written.

What is never replayed: device_startup rows (a startup's token and age are checked at receipt; a
replay would only find it stale and count it as a failed startup), and the reasons in
`NEVER_REPLAYED`, which depend on what a replay cannot see again (the body's bytes, an MQTT topic).

A run is a `replay_run` row. It walks its selection in raw-id order in bounded batches (keyset on
the raw id, up to the newest raw row at its start, so live ingest arriving meanwhile is not chased),
each batch one transaction that also records the run's position and counts: an interrupted run is
resumed (`resume=<run id>`) from its last committed batch. One replay runs at a time (an advisory
lock); live ingest goes on beside it: it only adds new raw rows, and a fact both write is stored
once (the unique index on the event), the other one becoming a duplicate.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql

from ingest_service.core.config import Settings
from ingest_service.ingest.body import ledger_item
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.decide import Rules
from ingest_service.ingest.reasons import Reason
from ingest_service.ingest.validation import STARTUP, Rejection
from ingest_service.ingest.writer import Writer

Connection = psycopg.AsyncConnection[Any]

NEVER_REPLAYED = frozenset(
    {
        Reason.INVALID_JSON,  # the body's bytes: parsing them again gives the same answer
        Reason.EMPTY_BODY,
        Reason.EMPTY_BATCH,
        Reason.TOPIC_MISMATCH,  # the MQTT door's rule: the topic is not in the ledger
    }
)
DEFAULT_BATCH_SIZE = 1000
# One replay at a time (pg_try_advisory_lock, held by the run's session).
REPLAY_LOCK = (0x5250, 0x4C59)
BATCH_ATTEMPTS = 3
# The first window of raw ids a batch is read from, in batches; it doubles while windows are sparse.
WINDOW_BATCHES = 4
MAX_WINDOW = 1 << 24

# What became of a row (the keys of Tally): fact, duplicate, error:<new reason>, unchanged, skipped.
FACT, DUPLICATE, UNCHANGED, SKIPPED = "fact", "duplicate", "unchanged", "skipped"


class ReplayError(Exception):
    """A replay that cannot start: a bad selection, another replay running, an unknown run."""


@dataclass(frozen=True)
class Selection:
    """Which rows a replay takes: current errors with these reasons, received in [since, until),
    of these devices and event types (each filter optional; every replayable error when none)."""

    reasons: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    device_ids: tuple[int, ...] = ()
    event_types: tuple[str, ...] = ()

    def check(self) -> None:
        known = {str(r) for r in Reason}
        for reason in self.reasons:
            if reason not in known:
                raise ReplayError(f"unknown reason {reason!r}; one of: {', '.join(sorted(known))}")
            if reason in NEVER_REPLAYED:
                raise ReplayError(f"rows with reason {reason!r} are never replayed (see NEVER_REPLAYED)")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ReplayError("--since must be before --until")

    def as_json(self) -> dict[str, Any]:
        return {
            "reasons": list(self.reasons),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "device_ids": list(self.device_ids),
            "event_types": list(self.event_types),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        return cls(
            reasons=tuple(data.get("reasons") or ()),
            since=datetime.fromisoformat(data["since"]) if data.get("since") else None,
            until=datetime.fromisoformat(data["until"]) if data.get("until") else None,
            device_ids=tuple(data.get("device_ids") or ()),
            event_types=tuple(data.get("event_types") or ()),
        )

    def where(self, after: int, upto: int) -> tuple[sql.Composed, dict[str, Any]]:
        """The selection's condition on `c` (current_ingest_error) and `r` (raw_record), with only
        the filters in use (so each plan fits its filters)."""
        parts = [
            sql.SQL("c.raw_record_id > %(after)s and c.raw_record_id <= %(upto)s"),
            sql.SQL("c.reason <> all(%(never)s::text[])"),
            sql.SQL("c.event_type is distinct from %(startup)s"),
        ]
        params: dict[str, Any] = {"after": after, "upto": upto, "never": sorted(NEVER_REPLAYED), "startup": STARTUP}
        if self.reasons:
            parts.append(sql.SQL("c.reason = any(%(reasons)s::text[])"))
            params["reasons"] = list(self.reasons)
        if self.since is not None:
            parts.append(sql.SQL("r.received_at >= %(since)s"))
            params["since"] = self.since
        if self.until is not None:
            parts.append(sql.SQL("r.received_at < %(until)s"))
            params["until"] = self.until
        if self.device_ids:
            # The device an error names, or (for an error that names none, e.g. an unknown event
            # type) the device_id of the stored event.
            parts.append(
                sql.SQL(
                    "(c.device_id = any(%(device_ids)s::bigint[]) or r.payload -> 'device_id'"
                    " in (select to_jsonb(d) from unnest(%(device_ids)s::bigint[]) as d))"
                )
            )
            params["device_ids"] = list(self.device_ids)
        if self.event_types:
            parts.append(sql.SQL("c.event_type = any(%(event_types)s::text[])"))
            params["event_types"] = list(self.event_types)
        return sql.SQL(" and ").join(parts), params


@dataclass
class Tally:
    """What became of the replayed rows, by the reason of the error they had."""

    by_reason: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, reason: str, result: str) -> None:
        self.by_reason.setdefault(reason, Counter())[result] += 1

    def merge(self, other: Tally) -> None:
        for reason, counts in other.by_reason.items():
            self.by_reason.setdefault(reason, Counter()).update(counts)

    def total(self, result: str | None = None) -> int:
        if result is None:
            return sum(sum(c.values()) for c in self.by_reason.values())
        if result == "error":
            return sum(n for c in self.by_reason.values() for k, n in c.items() if k.startswith("error:"))
        return sum(c[result] for c in self.by_reason.values())

    def counts(self) -> dict[str, int]:
        return {
            "selected": self.total(),
            "facts": self.total(FACT),
            "duplicates": self.total(DUPLICATE),
            "errors_changed": self.total("error"),
            "unchanged": self.total(UNCHANGED),
            "skipped": self.total(SKIPPED),
        }

    def lines(self) -> list[str]:
        """The tally as a table, one line per reason."""
        out = [f"{'reason':<28}{'rows':>9}{'fact':>9}{'dupl.':>9}{'unchanged':>11}{'skipped':>9}  other error"]
        for reason in sorted(self.by_reason):
            c = self.by_reason[reason]
            others = ", ".join(f"{k[6:]} {n}" for k, n in sorted(c.items()) if k.startswith("error:")) or "-"
            rows = sum(c.values())
            out.append(f"{reason:<28}{rows:>9}{c[FACT]:>9}{c[DUPLICATE]:>9}{c[UNCHANGED]:>11}{c[SKIPPED]:>9}  {others}")
        return out


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.done)

    def line(self) -> str:
        eta = self.remaining / self.rate if self.rate > 0 else 0.0
        return (
            f"replay: {self.done}/{self.total} rows, {self.rate:,.0f} rows/s, {self.remaining} remaining (~{eta:.0f} s)"
        )


@dataclass
class ReplayResult:
    run_id: int | None  # None for a dry run
    dry_run: bool
    selection: Selection
    tally: Tally
    elapsed: float
    # The UTC days whose marts the run changed ('YYYY-MM-DD', sorted): the received days of the raw
    # rows it superseded and the record days of the facts it wrote (empty for a dry run).
    days: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "selection": self.selection.as_json(),
            **self.tally.counts(),
            "by_reason": {r: dict(c) for r, c in self.tally.by_reason.items()},
            "days": self.days,
            "elapsed_seconds": round(self.elapsed, 3),
        }


class _DryRun(Exception):
    """Raised inside a dry run's batch transaction: everything it wrote is rolled back."""


_BATCH = sql.SQL("""
select c.raw_record_id, c.reason, r.payload::text, r.body_text, r.body_bytes
from ingest.current_ingest_error as c
join ingest.raw_record as r on r.id = c.raw_record_id
where {where}
order by c.raw_record_id
limit %(limit)s
""")
_COUNT = sql.SQL("""
select count(*)
from ingest.current_ingest_error as c
join ingest.raw_record as r on r.id = c.raw_record_id
where {where}
""")
_NEW_RUN = """
insert into ingest.replay_run (requested_by, selection, upto_raw_record_id)
values (%s, %s::jsonb, %s) returning id
"""
_RESUME = """
select selection, upto_raw_record_id, last_raw_record_id, status from ingest.replay_run where id = %s
"""
_PROGRESS = """
update ingest.replay_run
set last_raw_record_id = %s, selected = selected + %s, facts = facts + %s, duplicates = duplicates + %s,
    errors_changed = errors_changed + %s, unchanged = unchanged + %s, skipped = skipped + %s
where id = %s
"""
_FINISH = "update ingest.replay_run set status = 'finished', finished_at = now() where id = %s"
# The days a run touched (all its batches, resumed ones too): the received day of every raw row it
# superseded (ingest_parse, the error rates) and the record day of every fact it wrote (the rollup).
_DAYS = """
select distinct day from (
    select (r.received_at at time zone 'UTC')::date as day
    from ingest.outcome_supersession as s
    join ingest.raw_record as r on r.id = s.raw_record_id
    where s.replay_run_id = %(run)s
    union
    select (p.record_time at time zone 'UTC')::date
    from ingest.outcome_supersession as s
    join ingest.processed_record as p on p.raw_record_id = s.raw_record_id
    where s.replay_run_id = %(run)s and s.outcome = 'fact'
) as touched
order by day
"""


async def replay(
    conn: Connection,
    settings: Settings,
    selection: Selection,
    *,
    requested_by: str,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    resume: int | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> ReplayResult:
    """Run one replay on `conn` (autocommit; each batch is its own transaction). A dry run decides
    and writes every batch as a real one would, then rolls it back: its tally is what a run would do
    now (across batches, a repeat of a fact of an earlier batch counts as a fact, not a duplicate)."""
    if batch_size < 1:
        raise ReplayError("the batch size must be at least 1")
    started = time.monotonic()
    if not await _one_value(conn, "select pg_try_advisory_lock(%s, %s)", REPLAY_LOCK):
        raise ReplayError("another replay is running on this database; wait for it or resume it later")
    try:
        run_id, selection, upto, after = await _start(conn, selection, requested_by, dry_run, resume)
        writer = Writer(Rules.from_settings(settings, await _catalog(conn)), settings.delivery_key_window_seconds)
        where, params = selection.where(after, upto)
        total = int(await _one_value(conn, _COUNT.format(where=where), params))
        tally = Tally()
        done = 0
        window = batch_size * WINDOW_BATCHES
        while after < upto:
            # A window of raw ids at a time: the current errors are a union of two anti-joins, which
            # PostgreSQL reads whole before it sorts, so an open range would cost every batch all
            # the rows left (quadratic over a run). A window that holds few rows grows.
            high = min(upto, after + window)
            where, params = selection.where(after, high)
            cur = await conn.execute(_BATCH.format(where=where), {**params, "limit": batch_size})
            rows = await cur.fetchall()
            if len(rows) < batch_size:
                after = high
                if len(rows) < batch_size // 2:
                    window = min(window * 2, MAX_WINDOW)
            else:
                after = rows[-1][0]
            if not rows:
                continue
            tally.merge(await _replay_batch(conn, writer, run_id, rows, dry_run))
            done += len(rows)
            if progress is not None:
                progress(Progress(done, total, time.monotonic() - started))
        days: list[str] = []
        if run_id is not None:
            await conn.execute(_FINISH, (run_id,))
            cur = await conn.execute(_DAYS, {"run": run_id})
            days = [day.isoformat() for (day,) in await cur.fetchall()]
        return ReplayResult(run_id, dry_run, selection, tally, time.monotonic() - started, days)
    finally:
        await conn.execute("select pg_advisory_unlock(%s, %s)", REPLAY_LOCK)


async def _start(
    conn: Connection, selection: Selection, requested_by: str, dry_run: bool, resume: int | None
) -> tuple[int | None, Selection, int, int]:
    """The run (None for a dry run), its selection, the newest raw id it covers and where it is."""
    if resume is not None:
        cur = await conn.execute(_RESUME, (resume,))
        row = await cur.fetchone()
        if row is None:
            raise ReplayError(f"there is no replay run {resume}")
        stored, upto, after, status = row
        if status != "running":
            raise ReplayError(f"replay run {resume} is {status}; nothing to resume")
        return resume, Selection.from_json(stored), upto, after
    selection.check()
    upto = int(await _one_value(conn, "select coalesce(max(id), 0) from ingest.raw_record"))
    if dry_run:
        return None, selection, upto, 0
    run_id = await _one_value(conn, _NEW_RUN, (requested_by, orjson.dumps(selection.as_json()).decode(), upto))
    return int(run_id), selection, upto, 0


async def _catalog(conn: Connection) -> RecordTypeCatalog:
    catalog = RecordTypeCatalog()
    await catalog.refresh(conn)
    return catalog


async def _replay_batch(
    conn: Connection, writer: Writer, run_id: int | None, rows: list[tuple[Any, ...]], dry_run: bool
) -> Tally:
    """One batch, in one transaction with the run's progress; again on a deadlock with live ingest
    (two writers of the same facts in another order)."""
    for attempt in range(1, BATCH_ATTEMPTS + 1):
        try:
            return await _replay_batch_once(conn, writer, run_id, rows, dry_run)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            if attempt == BATCH_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def _replay_batch_once(
    conn: Connection, writer: Writer, run_id: int | None, rows: list[tuple[Any, ...]], dry_run: bool
) -> Tally:
    tally = Tally()
    raw_ids, reasons, items = [], [], []
    for raw_id, reason, payload, body_text, body_bytes in rows:
        item = ledger_item(payload, body_text, body_bytes)
        if type(item.parsed) is dict and item.parsed.get("event_type") == STARTUP:
            tally.add(reason, SKIPPED)  # a startup with an unusable event_type field of its error
            continue
        raw_ids.append(raw_id)
        reasons.append(reason)
        items.append(item)
    try:
        async with conn.transaction():
            run = run_id if run_id is not None else await _one_value(conn, _NEW_RUN, ("dry run", "{}", 0))
            replayed = await writer.replay(conn, run, raw_ids, items) if items else None
            if replayed is not None:
                for raw_id, reason, plan in zip(raw_ids, reasons, replayed.plans, strict=True):
                    tally.add(reason, _result(raw_id, plan, replayed.facts, replayed.duplicates, replayed.errors))
            if dry_run:
                raise _DryRun
            counts = tally.counts()
            await conn.execute(
                _PROGRESS,
                (
                    rows[-1][0],
                    counts["selected"],
                    counts["facts"],
                    counts["duplicates"],
                    counts["errors_changed"],
                    counts["unchanged"],
                    counts["skipped"],
                    run,
                ),
            )
    except _DryRun:
        return tally
    if replayed is not None:
        writer.seen(replayed.touched)
    return tally


def _result(raw_id: int, plan: object, facts: dict[int, int], duplicates: dict[int, int], errors: set[int]) -> str:
    if raw_id in facts:
        return FACT
    if raw_id in duplicates:
        return DUPLICATE
    if raw_id in errors and type(plan) is Rejection:
        return f"error:{plan.reason}"
    return UNCHANGED  # the same reason, a fact lost (kept its error), or changed by this run before


async def _one_value(conn: Connection, query: Any, params: Any = None) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


def summary(result: ReplayResult) -> list[str]:
    """What a replay did (or, dry, would do), grouped by reason, for people."""
    counts = result.tally.counts()
    head = (
        "dry run: nothing written; a replay now would change"
        if result.dry_run
        else f"replay run {result.run_id}: changed"
    )
    changed = counts["facts"] + counts["duplicates"] + counts["errors_changed"]
    lines = [
        f"{head} {changed} of {counts['selected']} rows in {result.elapsed:.1f} s "
        f"({counts['facts']} facts, {counts['duplicates']} duplicates, {counts['errors_changed']} other errors)"
    ]
    if result.days:
        lines.append(f"days touched (rebuild their marts with reprocess_days): {', '.join(result.days)}")
    if result.tally.by_reason:
        lines += result.tally.lines()
    return lines


def run(
    url: str,
    settings: Settings,
    selection: Selection,
    *,
    requested_by: str,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    resume: int | None = None,
    out: Callable[[str], None] = print,
) -> ReplayResult:
    """A replay from synchronous code (the CLI, Dagster): its own connection, progress to `out`."""

    async def main() -> ReplayResult:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, application_name="replay") as conn:
            return await replay(
                conn,
                settings,
                selection,
                requested_by=requested_by,
                dry_run=dry_run,
                batch_size=batch_size,
                resume=resume,
                progress=lambda p: out(p.line()),
            )

    return asyncio.run(main())
