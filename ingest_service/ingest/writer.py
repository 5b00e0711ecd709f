"""The write path: a batch of items becomes ledger rows and outcomes in a constant number of
statements whatever the batch size (array parameters, no per-item round trips).

The common batch (telemetry and rejected items of known or legacy devices) is one statement,
`ingest.write_items()` (migration 0003): device touches, the ledger, the facts, the errors and the
duplicates of replayed facts together, atomic on its own, so it needs no transaction around it.
Startups and telemetry for provisioned ids not yet seen add statements, and then the caller wraps
the batch in a transaction (`needs_transaction`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg

from ingest_service.ingest.reasons import Reason
from ingest_service.ingest.results import ItemResult, PendingItem
from ingest_service.ingest.validation import LEGACY_DEVICE_ID_MAX, Rejection, Startup, Telemetry

# last_seen_at of a device is refreshed at most this often: a hot device would otherwise be
# rewritten by every batch.
DEVICE_TOUCH_INTERVAL_SECONDS = 60.0

# Parameters go in binary (%b): psycopg's text array dumper escapes every string element with a
# regular expression (about 40 us per element), the binary one does not.
ALLOCATE_DEVICE_IDS = "select nextval('ingest.device_provisioned_id_seq') from generate_series(1, %b)"

# Ledger rows, facts, known errors, device touches and replayed facts' duplicates: one statement.
WRITE_ITEMS = """
select raw_ids, fact_raw_ids, fact_ids, duplicate_raw_ids, duplicate_fact_ids, lost_raw_ids
from ingest.write_items(
    %b::text[], %b::int[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bytea[],
    %b::int[], %b::bigint[], %b::smallint[], %b::float8[], %b::float8[],
    %b::int[], %b::text[], %b::text[], %b::text[], %b::bigint[],
    %b::bigint[]
)
"""

FIND_DEVICES = "select id from ingest.device where id = any(%b::bigint[])"

FIND_STARTUP_DEVICES = """
select id, serial from ingest.device where serial = any(%b::text[]) or id = any(%b::bigint[])
"""

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


@dataclass
class DeviceCache:
    """Device ids known to exist, with when this process last refreshed their last_seen_at."""

    touched: dict[int, float] = field(default_factory=dict)

    def needs_touch(self, device_id: int, now: float) -> bool:
        last = self.touched.get(device_id)
        return last is None or now - last > DEVICE_TOUCH_INTERVAL_SECONDS

    def clear(self) -> None:
        self.touched.clear()


LOST_FACT = Rejection("error", Reason.INTERNAL_ERROR, "fact neither stored nor found as duplicate")


def _unseen_provisioned(outcome: object, cache: DeviceCache) -> bool:
    """Telemetry for a provisioned id (>= 2^31) this process has not seen: the device must be looked
    up first (legacy ids are created on first sight instead)."""
    if type(outcome) is not Telemetry:
        return False
    return outcome.device_id > LEGACY_DEVICE_ID_MAX and outcome.device_id not in cache.touched


def needs_transaction(items: list[PendingItem], cache: DeviceCache) -> bool:
    """Whether `write_batch` will send more than its one statement for these items: startups, and
    telemetry for provisioned ids this process has not seen yet, add statements."""
    return any(type(item.outcome) is Startup or _unseen_provisioned(item.outcome, cache) for item in items)


def _rejected(raw_id: int, rejection: Rejection) -> ItemResult:
    return ItemResult(
        raw_id,
        rejection.status,
        reason=rejection.reason,
        detail=rejection.detail,
        device_id=rejection.device_id,
    )


async def _column(conn: psycopg.AsyncConnection, query: str, *params: object) -> list:
    cur = await conn.execute(query, params)
    return [row[0] for row in await cur.fetchall()]


async def _resolve_startups(
    conn: psycopg.AsyncConnection, startups: list[tuple[int, Startup]]
) -> dict[int, Startup | Rejection | int]:
    """Decide each startup's device: found by serial, an upgraded legacy id, or a new provisioned id.

    Returns position -> device id, or a Rejection for a conflicting claim.
    """
    serials = sorted({s.serial for _, s in startups})
    named = sorted({s.device_id for _, s in startups if s.device_id is not None})
    cur = await conn.execute(FIND_STARTUP_DEVICES, (serials, named))
    by_serial: dict[str, int] = {}
    serial_of: dict[int, str | None] = {}
    for device_id, serial in await cur.fetchall():
        serial_of[device_id] = serial
        if serial is not None:
            by_serial[serial] = device_id

    decided: dict[int, Startup | Rejection | int] = {}
    need_new: list[int] = []
    for pos, s in startups:
        owner = by_serial.get(s.serial)
        if s.device_id is not None:
            current = serial_of.get(s.device_id)
            if owner is not None and owner != s.device_id:
                decided[pos] = Rejection(
                    "invalid",
                    Reason.SERIAL_CONFLICT,
                    f"serial {s.serial} already belongs to device {owner}",
                    "device_startup",
                    s.device_id,
                )
                continue
            if current is not None and current != s.serial:
                decided[pos] = Rejection(
                    "invalid",
                    Reason.DEVICE_CONFLICT,
                    f"device {s.device_id} is provisioned with another serial",
                    "device_startup",
                    s.device_id,
                )
                continue
            decided[pos] = s.device_id
        elif owner is not None:
            decided[pos] = owner
        else:
            need_new.append(pos)
            continue
        by_serial[s.serial] = decided[pos]  # type: ignore[assignment]
        serial_of[decided[pos]] = s.serial  # type: ignore[index]

    if need_new:
        # Several startups of one new serial in a batch share one new id.
        by_pos = dict(startups)
        new_serials = sorted({by_pos[pos].serial for pos in need_new})
        assigned = dict(zip(new_serials, await _column(conn, ALLOCATE_DEVICE_IDS, len(new_serials)), strict=True))
        for pos in need_new:
            decided[pos] = assigned[by_pos[pos].serial]
    return decided


async def write_batch(
    conn: psycopg.AsyncConnection, items: list[PendingItem], cache: DeviceCache
) -> tuple[list[ItemResult], set[int]]:
    """Store `items`: in the caller's transaction when `needs_transaction` says so, else as one
    statement on its own. Returns the results in input order and the device ids to remember in the
    cache once the write has committed."""
    now = time.monotonic()
    outcomes = [item.outcome for item in items]

    unknown_provisioned = sorted({o.device_id for o in outcomes if _unseen_provisioned(o, cache)})  # type: ignore[union-attr]
    if unknown_provisioned:
        missing = set(unknown_provisioned) - set(await _column(conn, FIND_DEVICES, unknown_provisioned))
        for pos, o in enumerate(outcomes):
            if type(o) is Telemetry and o.device_id in missing:
                outcomes[pos] = Rejection(
                    "invalid",
                    Reason.UNKNOWN_DEVICE,
                    f"device {o.device_id} was never provisioned",
                    None,
                    o.device_id,
                )

    startups = [(pos, o) for pos, o in enumerate(outcomes) if type(o) is Startup]
    startup_devices: dict[int, int] = {}
    upgraded: dict[int, bool] = {}
    if startups:
        decided = await _resolve_startups(conn, startups)
        rows: dict[int, tuple[str, str | None, str]] = {}
        for pos, s in startups:
            verdict = decided[pos]
            if isinstance(verdict, Rejection):
                outcomes[pos] = verdict
                continue
            startup_devices[pos] = verdict  # type: ignore[assignment]
            upgraded[pos] = s.device_id is not None
            rows[verdict] = (  # type: ignore[index]
                s.serial,
                s.firmware,
                "legacy" if verdict <= LEGACY_DEVICE_ID_MAX else "provisioned",  # type: ignore[operator]
            )
        ids = sorted(rows)
        await conn.execute(
            UPSERT_STARTUP_DEVICES,
            (ids, [rows[i][0] for i in ids], [rows[i][1] for i in ids], [rows[i][2] for i in ids]),
        )

    # Facts and known errors, by 1-based position (the `with ordinality` of the main statement).
    fact_pos: list[int] = []
    fact_device: list[int] = []
    fact_type: list[int] = []
    fact_time: list[float] = []
    fact_value: list[float] = []
    error_pos: list[int] = []
    errors: list[Rejection] = []
    touch_set: set[int] = set()
    for pos, o in enumerate(outcomes, 1):
        kind = type(o)
        if kind is Telemetry:
            device_id = o.device_id  # type: ignore[union-attr]
            fact_pos.append(pos)
            fact_device.append(device_id)
            fact_type.append(o.record_type_id)  # type: ignore[union-attr]
            fact_time.append(o.record_time)  # type: ignore[union-attr]
            fact_value.append(o.value)  # type: ignore[union-attr]
            if cache.needs_touch(device_id, now):
                touch_set.add(device_id)
        elif kind is Rejection:
            error_pos.append(pos)
            errors.append(o)  # type: ignore[arg-type]

    metas = [item.meta for item in items]
    bodies = [item.body for item in items]
    cur = await conn.execute(
        WRITE_ITEMS,
        (
            [m.request_id for m in metas],
            [item.batch_index for item in items],
            [m.content_type for m in metas],
            [m.content_encoding for m in metas],
            [m.remote_addr for m in metas],
            [b.payload for b in bodies],
            [b.body_text for b in bodies],
            [b.body_bytes for b in bodies],
            fact_pos,
            fact_device,
            fact_type,
            fact_time,
            fact_value,
            error_pos,
            [e.reason for e in errors],
            [e.detail for e in errors],
            [e.event_type for e in errors],
            [e.device_id for e in errors],
            # Sorted, so concurrent writers lock device rows in the same order and cannot deadlock.
            # Provisioned ids here exist already (checked above), so only legacy ids can be inserted.
            sorted(touch_set),
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    raw_ids: list[int] = row[0]
    stored = dict(zip(row[1] or (), row[2] or (), strict=True))  # raw id -> new fact id
    duplicates = dict(zip(row[3] or (), row[4] or (), strict=True))  # raw id -> the fact it repeats
    lost = set(row[5] or ())  # facts neither stored nor found (cannot happen while uq_processed_event holds)

    results: list[ItemResult | None] = [None] * len(items)
    for pos in fact_pos:
        raw_id = raw_ids[pos - 1]
        fact_id = stored.get(raw_id)
        if fact_id is not None:
            results[pos - 1] = ItemResult(raw_id, "ok", processed_id=fact_id)
        elif raw_id in duplicates:
            results[pos - 1] = ItemResult(raw_id, "duplicate", processed_id=duplicates[raw_id])
        elif raw_id in lost:
            results[pos - 1] = _rejected(raw_id, LOST_FACT)

    if startup_devices:
        positions = sorted(startup_devices)
        await conn.execute(
            INSERT_STARTUPS,
            (
                [raw_ids[p] for p in positions],
                [startup_devices[p] for p in positions],
                [outcomes[p].serial for p in positions],  # type: ignore[union-attr]
                [outcomes[p].firmware for p in positions],  # type: ignore[union-attr]
                [outcomes[p].started_at for p in positions],  # type: ignore[union-attr]
                [upgraded[p] for p in positions],
            ),
        )
        for p in positions:
            results[p] = ItemResult(raw_ids[p], "provisioned", device_id=startup_devices[p])

    for pos, rejection in zip(error_pos, errors, strict=True):
        results[pos - 1] = _rejected(raw_ids[pos - 1], rejection)

    final = [r for r in results if r is not None]
    assert len(final) == len(items), "every item must have exactly one outcome"
    return final, touch_set | set(startup_devices.values())
