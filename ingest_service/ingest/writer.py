"""Write: a group of requests becomes ledger rows and outcomes, in one statement when it can be.

`Writer.store()` takes one group through the stages that need the database, in order: each
event's own rules (decide.check), what the decisions need from the database (decide.needs, read
here), the decisions (decide.decide), the write, and the answers (answer.py). The writer alone
chooses how a group is written, from what it needs:

- telemetry and rejected items of known or legacy devices, with or without delivery keys: ONE
  statement, `ingest.write_items()` (migration 0003; its duplicate lookup is
  `ingest.link_duplicates()`, 0008, shared with replay), or `ingest.write_keyed_items()` (0005) when
  a request has a delivery key, which records the keys too. Atomic on its own: autocommit, no
  BEGIN/COMMIT, one round trip. Array parameters: the statement count does not grow with the group.
- telemetry for provisioned ids this process has not seen yet: one read before that statement
  (devices are never deleted, so what it found still holds when the statement runs).
- startups: one transaction, which locks the serials it claims (so the failed-startup limit holds
  across workers and hosts), reads their recent failures and their devices, and writes the
  devices, the items, the startups and the failures, committed together.

A delivery key recorded meanwhile (by a concurrent request, or before) makes the statement fail
whole, so nothing of the group is written; the group is written again without the requests whose
key is recorded, and those are answered with their stored results.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ingest_service.ingest import answer
from ingest_service.ingest.answer import Answer, ItemResult
from ingest_service.ingest.body import BodyItem
from ingest_service.ingest.decide import (
    UNSTORABLE,
    Checked,
    Decision,
    Known,
    Needs,
    Plan,
    Provision,
    Rules,
    check,
    decide,
    needs,
)
from ingest_service.ingest.delivery import Delivery, DeliveryKeyReused
from ingest_service.ingest.validation import LEGACY_DEVICE_ID_MAX, Rejection, Telemetry

Connection = psycopg.AsyncConnection[Any]

# last_seen_at of a device is refreshed at most this often: a hot device would otherwise be
# rewritten by every group.
DEVICE_TOUCH_INTERVAL_SECONDS = 60.0
# A group is written again at most this often when the database changed under it: a delivery key
# recorded meanwhile, or a device this process believed unknown or known.
ATTEMPTS = 3
DELIVERY_KEY_CONSTRAINT = "delivery_pkey"
# Startups lock their serials by bucket (advisory locks, held to commit): a group of 10,000 startups
# takes at most this many locks, well within PostgreSQL's shared lock table.
SERIAL_LOCK_SPACE = 0x5354
SERIAL_LOCK_BUCKETS = 64

# Parameters go in binary (%b): psycopg's text array dumper escapes every string element with a
# regular expression (about 40 us per element), the binary one does not.
_ITEM_PARAMETERS = """
    %b::text[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bytea[],
    %b::int[], %b::bigint[], %b::smallint[], %b::float8[], %b::float8[],
    %b::int[], %b::text[], %b::text[], %b::text[], %b::bigint[],
    %b::bigint[]"""
_WRITTEN = "select raw_ids, fact_raw_ids, fact_ids, duplicate_raw_ids, duplicate_fact_ids, lost_raw_ids"
# Ledger rows, facts, known errors, device touches and replayed facts' duplicates: one statement.
WRITE_ITEMS = f"{_WRITTEN} from ingest.write_items({_ITEM_PARAMETERS})"
# The same, and the delivery keys of the group's requests.
WRITE_KEYED_ITEMS = f"""{_WRITTEN} from ingest.write_keyed_items({_ITEM_PARAMETERS},
    %b::text[], %b::text[], %b::bytea[], %b::int[], %b::int[], %b::float8)"""
# A replay's write (migration 0007): the outcomes of ledger rows that exist already, no ledger row.
REPLAY_ITEMS = """
select fact_raw_ids, fact_ids, duplicate_raw_ids, duplicate_fact_ids, error_raw_ids, lost_raw_ids
from ingest.replay_items(%b::bigint, %b::bigint[],
    %b::int[], %b::bigint[], %b::smallint[], %b::float8[], %b::float8[],
    %b::int[], %b::text[], %b::text[], %b::text[], %b::bigint[],
    %b::bigint[])"""

FIND_DEVICES = "select id from ingest.device where id = any(%b::bigint[])"

LOCK_SERIALS = "select pg_advisory_xact_lock(%b::int, bucket) from unnest(%b::int[]) as bucket"

FAILURE_AGES = """
select serial,
       (array_agg(extract(epoch from statement_timestamp() - failed_at)::float8 order by failed_at desc))[1:%b::int]
from ingest.startup_failure
where serial = any(%b::text[]) and failed_at > statement_timestamp() - make_interval(secs => %b::float8)
group by serial
"""

FIND_STARTUP_DEVICES = """
select id, serial from ingest.device where serial = any(%b::text[]) or id = any(%b::bigint[])
"""

ALLOCATE_DEVICE_IDS = "select nextval('ingest.device_provisioned_id_seq') from generate_series(1, %b)"

UPSERT_STARTUP_DEVICES = """
insert into ingest.device as d (id, serial, firmware, origin, provisioned_at)
select u.id, u.serial, u.firmware, u.origin, now()
from unnest(%b::bigint[], %b::text[], %b::text[], %b::text[]) as u(id, serial, firmware, origin)
on conflict (id) do update
    set serial = excluded.serial,
        firmware = coalesce(excluded.firmware, d.firmware),
        provisioned_at = coalesce(d.provisioned_at, now()),
        last_seen_at = now()
"""

INSERT_STARTUPS = """
insert into ingest.device_startup (raw_record_id, device_id, serial, firmware, started_at, upgraded_legacy)
select u.raw_id, u.device_id, u.serial, u.firmware, to_timestamp(u.started_at), u.upgraded
from unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::float8[], %b::bool[])
    as u(raw_id, device_id, serial, firmware, started_at, upgraded)
"""

INSERT_FAILURES = """
insert into ingest.startup_failure (raw_record_id, serial, failed_at)
select u.raw_id, u.serial, statement_timestamp() from unnest(%b::bigint[], %b::text[]) as u(raw_id, serial)
"""

FIND_DELIVERIES = """
select d.door, d.key, d.body_sha256, d.raw_record_ids
from ingest.delivery as d
join unnest(%b::text[], %b::text[]) as k(door, key) using (door, key)
where d.created_at > statement_timestamp() - make_interval(secs => %b::float8)
"""

# The outcome of each raw row, as answer.recorded() reads it: its current one (a replay may have
# superseded its error, migration 0007).
RECORDED_OUTCOMES = """
select u.id, p.id, d.processed_record_id, s.device_id, e.reason, e.detail, e.device_id
from unnest(%b::bigint[]) as u(id)
left join ingest.processed_record as p on p.raw_record_id = u.id
left join ingest.raw_duplicate as d on d.raw_record_id = u.id
left join ingest.device_startup as s on s.raw_record_id = u.id
left join ingest.current_ingest_error as e on e.raw_record_id = u.id
"""

# Expired delivery keys and failed startups past the limiter's window: neither is ever read again.
SWEEP_DELIVERIES = "delete from ingest.delivery where created_at < now() - make_interval(secs => %b::float8)"
SWEEP_FAILURES = "delete from ingest.startup_failure where failed_at < now() - make_interval(secs => %b::float8)"

NOTHING_TO_KNOW = Known()


@dataclass
class DeviceCache:
    """Device ids known to exist, with when this process last refreshed their last_seen_at."""

    touched: dict[int, float] = field(default_factory=dict)

    def needs_touch(self, device_id: int, now: float) -> bool:
        last = self.touched.get(device_id)
        return last is None or now - last > DEVICE_TOUCH_INTERVAL_SECONDS

    def clear(self) -> None:
        self.touched.clear()


@dataclass(slots=True)
class Request:
    """One door request in a group: its items, how it came, and (with a delivery key) the
    fingerprint of its body (delivery.fingerprint)."""

    items: list[BodyItem]
    delivery: Delivery
    fingerprint: bytes | None = None


@dataclass(slots=True)
class Written:
    """What the write reports: the ledger row of each item, and what the database found."""

    raw_ids: list[int]  # by position in the group
    facts: dict[int, int]  # raw id -> the new fact
    duplicates: dict[int, int]  # raw id -> the fact it repeats
    lost: set[int]  # raw ids of facts neither stored nor found (cannot happen while uq_processed_event holds)
    startup_devices: dict[int, int]  # position -> the device its startup provisioned
    touched: set[int]  # devices written: known to exist once committed


@dataclass(slots=True)
class Replayed:
    """What a replay's write reports: the plans it wrote from, and what changed, by raw id."""

    plans: list[Plan]  # one per replayed row, in the order given
    facts: dict[int, int]  # raw id -> the new fact
    duplicates: dict[int, int]  # raw id -> the fact it repeats
    errors: set[int]  # raw ids rejected again with another reason (a replay_error row)
    lost: set[int]  # raw ids of facts neither stored nor found (they keep their error)
    touched: set[int]  # devices written: known to exist once committed (Writer.seen)


@dataclass(slots=True, frozen=True)
class Record:
    """A recorded delivery key: the fingerprint of its body and the stored results of its items."""

    fingerprint: bytes
    results: list[ItemResult]


class Writer:
    """Stores groups of requests (see the module docstring). One per process: it keeps the devices
    this process has seen, so that telemetry of a known device needs no read."""

    def __init__(self, rules: Rules, delivery_key_window: float) -> None:
        self.rules = rules
        self.delivery_key_window = delivery_key_window
        self.devices = DeviceCache()

    async def store(
        self, conn: Connection, requests: list[Request], *, unstorable: bool = False
    ) -> list[Answer | DeliveryKeyReused]:
        """Decide and write one group; each request's answer in order. With `unstorable`, the last
        resort for a request the write path could not store: every item is kept as text, as an
        `internal_error`."""
        answers: dict[int, Answer | DeliveryKeyReused] = {}
        # A key carried twice within the group: the later copy is answered as the first one is.
        first_of_key: dict[tuple[str, str], int] = {}
        repeats: dict[int, int] = {}  # index of a later copy -> index of the first
        for index, request in enumerate(requests):
            key = _key_of(request.delivery)
            if key is not None:
                first = first_of_key.setdefault(key, index)
                if first != index:
                    repeats[index] = first
        pending = [index for index in range(len(requests)) if index not in repeats]
        records: dict[tuple[str, str], Record] = {}
        for attempt in range(1, ATTEMPTS + 1):
            if attempt > 1:  # the database changed under the group: some of its keys may be recorded now
                keys = [key for key in (_key_of(requests[i].delivery) for i in pending) if key is not None]
                records = await self.recorded(conn, keys)
                for index in pending:
                    recorded = _answer_from_record(requests[index], records)
                    if recorded is not None:
                        answers[index] = recorded
                pending = [index for index in pending if index not in answers]
            try:
                stored = await self._store_group(conn, [requests[i] for i in pending], unstorable)
            except psycopg.errors.IntegrityError as exc:
                # A delivery key recorded meanwhile, or a device provisioned by a concurrent writer
                # or unknown to a stale cache: nothing of the group was written; start over with
                # what the database now holds.
                if attempt == ATTEMPTS:
                    raise
                if exc.diag.constraint_name != DELIVERY_KEY_CONSTRAINT:
                    self.devices.clear()
                continue
            answers.update(zip(pending, stored, strict=True))
            break
        for index, first in repeats.items():
            answers[index] = _answer_from_record(requests[index], records) or _repeat(
                requests[index], requests[first], answers[first]
            )
        return [answers[index] for index in range(len(requests))]

    async def _store_group(self, conn: Connection, requests: list[Request], unstorable: bool) -> list[Answer]:
        if not requests:
            return []
        items = [item for request in requests for item in request.items]
        if unstorable:
            items = [item.as_text() for item in items]
            plans: list[Plan] = [UNSTORABLE] * len(items)
            decision = Decision(plans, {})
            written = await self._write(conn, requests, items, decision)
        else:
            checked = check(items, self.rules, time.time())
            wanted = needs(checked, self.devices.touched)
            if wanted.serials:
                async with conn.transaction():
                    await self._lock_serials(conn, wanted.serials)
                    decision, written = await self._decide_and_write(conn, requests, items, checked, wanted)
            else:
                decision, written = await self._decide_and_write(conn, requests, items, checked, wanted)
        now = time.monotonic()
        for device_id in written.touched:
            self.devices.touched[device_id] = now
        results = answer.results(decision.plans, written)
        answers, start = [], 0
        for request in requests:
            end = start + len(request.items)
            answers.append(Answer(results[start:end]))
            start = end
        return answers

    def seen(self, device_ids: set[int]) -> None:
        """Devices known to exist now (a replay's, once its transaction committed)."""
        now = time.monotonic()
        for device_id in device_ids:
            self.devices.touched[device_id] = now

    async def replay(self, conn: Connection, run_id: int, raw_ids: list[int], items: list[BodyItem]) -> Replayed:
        """Decide ledger rows again with today's rules and write what changed: the same stages as
        `store()`, but the ledger rows exist (`ingest.replay_items()`, migration 0007). The rows'
        current outcome must be an error and none may be a device_startup (a startup's token and
        age are checked at receipt: lifecycle/replay.py selects none)."""
        checked = check(items, self.rules, time.time())
        wanted = needs(checked, self.devices.touched)
        if wanted.serials:
            raise ValueError("device_startup rows are never replayed")
        known = await self._read(conn, wanted) if wanted.provisioned_ids else NOTHING_TO_KNOW
        decision = decide(checked, known, self.rules)
        outcomes = _Outcomes.of(decision.plans, self.devices)
        cur = await conn.execute(REPLAY_ITEMS, [run_id, raw_ids, *outcomes.columns()])
        row = await cur.fetchone()
        assert row is not None
        return Replayed(
            plans=decision.plans,
            facts=dict(zip(row[0] or (), row[1] or (), strict=True)),
            duplicates=dict(zip(row[2] or (), row[3] or (), strict=True)),
            errors=set(row[4] or ()),
            lost=set(row[5] or ()),
            touched=outcomes.touch,
        )

    async def _decide_and_write(
        self, conn: Connection, requests: list[Request], items: list[BodyItem], checked: Checked, wanted: Needs
    ) -> tuple[Decision, Written]:
        known = await self._read(conn, wanted) if wanted.serials or wanted.provisioned_ids else NOTHING_TO_KNOW
        decision = decide(checked, known, self.rules)
        return decision, await self._write(conn, requests, items, decision)

    @staticmethod
    async def _lock_serials(conn: Connection, serials: list[str]) -> None:
        # Sorted buckets: concurrent groups take their locks in the same order and cannot deadlock.
        buckets = sorted({zlib.crc32(serial.encode()) % SERIAL_LOCK_BUCKETS for serial in serials})
        await conn.execute(LOCK_SERIALS, (SERIAL_LOCK_SPACE, buckets))

    async def _read(self, conn: Connection, wanted: Needs) -> Known:
        """What the decisions need from the database (decide.Needs)."""
        known = Known()
        if wanted.provisioned_ids:
            existing = set(await _column(conn, FIND_DEVICES, wanted.provisioned_ids))
            known.unknown_devices = set(wanted.provisioned_ids) - existing
        if wanted.serials:
            rules = self.rules
            cur = await conn.execute(FAILURE_AGES, (rules.failures_per_serial, wanted.serials, rules.failure_window))
            known.failure_ages = {serial: list(ages) for serial, ages in await cur.fetchall()}
            cur = await conn.execute(FIND_STARTUP_DEVICES, (wanted.serials, wanted.named_device_ids))
            for device_id, serial in await cur.fetchall():
                known.serial_of_device[device_id] = serial
                if serial is not None:
                    known.device_of_serial[serial] = device_id
        return known

    async def _write(
        self, conn: Connection, requests: list[Request], items: list[BodyItem], decision: Decision
    ) -> Written:
        """Write the group's plans: one statement, plus the startups' own when there are any (in
        the transaction `_store_group` opened for them)."""
        outcomes = _Outcomes.of(decision.plans, self.devices)
        provisions = outcomes.provisions
        startup_devices = await self._provision(conn, provisions) if provisions else {}
        params = [*_ledger_columns(requests, items), *outcomes.columns()]
        keys = _delivery_keys(requests)
        if keys is None:
            cur = await conn.execute(WRITE_ITEMS, params)
        else:
            cur = await conn.execute(WRITE_KEYED_ITEMS, [*params, *keys, self.delivery_key_window])
        row = await cur.fetchone()
        assert row is not None
        raw_ids: list[int] = row[0]
        if provisions:
            positions = sorted(provisions)
            await conn.execute(
                INSERT_STARTUPS,
                (
                    [raw_ids[p] for p in positions],
                    [startup_devices[p] for p in positions],
                    [provisions[p].serial for p in positions],
                    [provisions[p].firmware for p in positions],
                    [provisions[p].started_at for p in positions],
                    [provisions[p].upgraded_legacy for p in positions],
                ),
            )
        if decision.failed_serials:
            positions = sorted(decision.failed_serials)
            failed = ([raw_ids[p] for p in positions], [decision.failed_serials[p] for p in positions])
            await conn.execute(INSERT_FAILURES, failed)
        return Written(
            raw_ids=raw_ids,
            facts=dict(zip(row[1] or (), row[2] or (), strict=True)),
            duplicates=dict(zip(row[3] or (), row[4] or (), strict=True)),
            lost=set(row[5] or ()),
            startup_devices=startup_devices,
            touched=outcomes.touch | set(startup_devices.values()),
        )

    @staticmethod
    async def _provision(conn: Connection, provisions: dict[int, Provision]) -> dict[int, int]:
        """Write the startups' devices (a new id for each new serial); position -> device id."""
        new_serials = sorted({p.serial for p in provisions.values() if p.device_id is None})
        assigned: dict[str, int] = {}
        if new_serials:
            ids = await _column(conn, ALLOCATE_DEVICE_IDS, len(new_serials))
            assigned = dict(zip(new_serials, ids, strict=True))
        device_of: dict[int, int] = {}
        rows: dict[int, Provision] = {}
        for pos, plan in provisions.items():
            device_id = plan.device_id if plan.device_id is not None else assigned[plan.serial]
            device_of[pos] = device_id
            rows[device_id] = plan
        ids = sorted(rows)
        await conn.execute(
            UPSERT_STARTUP_DEVICES,
            (
                ids,
                [rows[i].serial for i in ids],
                [rows[i].firmware for i in ids],
                ["legacy" if i <= LEGACY_DEVICE_ID_MAX else "provisioned" for i in ids],
            ),
        )
        return device_of

    async def recorded(self, conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Record]:
        """Those of these (door, key) delivery keys that are recorded within the window, with the
        fingerprint of their body and their stored results."""
        if not keys:
            return {}
        cur = await conn.execute(
            FIND_DELIVERIES, ([door for door, _ in keys], [key for _, key in keys], self.delivery_key_window)
        )
        found = {(door, key): (bytes(sha), raw_ids) for door, key, sha, raw_ids in await cur.fetchall()}
        if not found:
            return {}
        all_raw_ids = [raw_id for _, raw_ids in found.values() for raw_id in raw_ids]
        cur = await conn.execute(RECORDED_OUTCOMES, (all_raw_ids,))
        by_raw_id = answer.recorded(await cur.fetchall())
        return {key: Record(sha, [by_raw_id[raw_id] for raw_id in raw_ids]) for key, (sha, raw_ids) in found.items()}

    async def sweep(self, conn: Connection) -> tuple[int, int]:
        """Delete expired delivery keys and failed startups past the limiter's window; the counts."""
        deliveries = await conn.execute(SWEEP_DELIVERIES, (self.delivery_key_window,))
        failures = await conn.execute(SWEEP_FAILURES, (self.rules.failure_window,))
        return deliveries.rowcount, failures.rowcount


@dataclass(slots=True)
class _Outcomes:
    """The plans as write_items' outcome columns: facts and known errors by 1-based position (the
    `with ordinality` of its ledger rows), and the startups, which have statements of their own."""

    fact_pos: list[int] = field(default_factory=list)
    fact_device: list[int] = field(default_factory=list)
    fact_type: list[int] = field(default_factory=list)
    fact_time: list[float] = field(default_factory=list)
    fact_value: list[float] = field(default_factory=list)
    error_pos: list[int] = field(default_factory=list)
    errors: list[Rejection] = field(default_factory=list)
    provisions: dict[int, Provision] = field(default_factory=dict)  # by 0-based position
    touch: set[int] = field(default_factory=set)  # devices to create (legacy) or to mark as seen now

    @classmethod
    def of(cls, plans: list[Plan], devices: DeviceCache) -> _Outcomes:
        out = cls()
        now = time.monotonic()
        needs_touch = devices.needs_touch
        for pos, plan in enumerate(plans):
            if type(plan) is Telemetry:
                out.fact_pos.append(pos + 1)
                out.fact_device.append(plan.device_id)
                out.fact_type.append(plan.record_type_id)
                out.fact_time.append(plan.record_time)
                out.fact_value.append(plan.value)
                if needs_touch(plan.device_id, now):
                    out.touch.add(plan.device_id)
            elif type(plan) is Rejection:
                out.error_pos.append(pos + 1)
                out.errors.append(plan)
            elif type(plan) is Provision:
                out.provisions[pos] = plan
        return out

    def columns(self) -> list[object]:
        errors = self.errors
        return [
            self.fact_pos,
            self.fact_device,
            self.fact_type,
            self.fact_time,
            self.fact_value,
            self.error_pos,
            [e.reason for e in errors],
            [e.detail for e in errors],
            [e.event_type for e in errors],
            [e.device_id for e in errors],
            # Sorted, so concurrent writers lock device rows in the same order and cannot deadlock.
            # Provisioned ids here exist already (decide rejected the others), so only legacy ids
            # can be inserted.
            sorted(self.touch),
        ]


def _ledger_columns(requests: list[Request], items: list[BodyItem]) -> list[object]:
    """write_items' ledger columns: one row per item, with its request's delivery."""
    request_ids: list[str] = []
    batch_indexes: list[int] = []
    content_types: list[str | None] = []
    content_encodings: list[str | None] = []
    remote_addrs: list[str | None] = []
    for request in requests:
        delivery, count = request.delivery, len(request.items)
        request_ids += [delivery.request_id] * count
        batch_indexes += range(count)
        content_types += [delivery.content_type] * count
        content_encodings += [delivery.content_encoding] * count
        remote_addrs += [delivery.remote_addr] * count
    return [
        request_ids,
        batch_indexes,
        content_types,
        content_encodings,
        remote_addrs,
        [item.payload for item in items],
        [item.body_text for item in items],
        [item.body_bytes for item in items],
    ]


def _key_of(delivery: Delivery) -> tuple[str, str] | None:
    return None if delivery.key is None else (delivery.door, delivery.key)


def _delivery_keys(requests: list[Request]) -> list[object] | None:
    """The delivery-key parameters of write_keyed_items (door, key, fingerprint, first 1-based
    position, item count per keyed request), or None when no request of the group has a key."""
    doors: list[str] = []
    keys: list[str] = []
    fingerprints: list[bytes] = []
    firsts: list[int] = []
    counts: list[int] = []
    position = 1
    for request in requests:
        delivery = request.delivery
        if delivery.key is not None:
            assert request.fingerprint is not None, "a request with a delivery key has a fingerprint"
            doors.append(delivery.door)
            keys.append(delivery.key)
            fingerprints.append(request.fingerprint)
            firsts.append(position)
            counts.append(len(request.items))
        position += len(request.items)
    return [doors, keys, fingerprints, firsts, counts] if keys else None


def _answer_from_record(request: Request, records: dict[tuple[str, str], Record]) -> Answer | DeliveryKeyReused | None:
    """A request whose key is recorded: its stored results, or refused for a different body."""
    key = _key_of(request.delivery)
    record = records.get(key) if key is not None else None
    if record is None:
        return None
    if record.fingerprint != request.fingerprint:
        return DeliveryKeyReused(request.delivery.door, request.delivery.key or "")
    return Answer(record.results, replayed=True)


def _repeat(request: Request, first: Request, first_answer: Answer | DeliveryKeyReused) -> Answer | DeliveryKeyReused:
    """A request whose key an earlier request of its group carried: answered as that one was."""
    if first.fingerprint != request.fingerprint or not isinstance(first_answer, Answer):
        return DeliveryKeyReused(request.delivery.door, request.delivery.key or "")
    return Answer(first_answer.results, replayed=True)


async def _column(conn: Connection, query: str, *params: object) -> list[Any]:
    cur = await conn.execute(query, params)
    return [row[0] for row in await cur.fetchall()]
