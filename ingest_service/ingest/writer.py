"""The write path: a batch of items becomes ledger rows and outcomes in one transaction, in a
constant number of statements whatever the batch size (array parameters, no per-item round trips)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg

from ingest_service.ingest.results import ItemResult, PendingItem
from ingest_service.ingest.validation import LEGACY_DEVICE_ID_MAX, Rejection, Startup, Telemetry

# last_seen_at of a device is refreshed at most this often: a hot device would otherwise be
# rewritten by every batch.
DEVICE_TOUCH_INTERVAL_SECONDS = 60.0

ALLOCATE_RAW_IDS = "select nextval('ingest.raw_record_id_seq') from generate_series(1, %s)"
ALLOCATE_DEVICE_IDS = "select nextval('ingest.device_provisioned_id_seq') from generate_series(1, %s)"

INSERT_RAW = """
insert into ingest.raw_record
    (id, request_id, batch_index, content_type, content_encoding, remote_addr, payload, body_text, body_bytes)
select u.id, u.request_id, u.batch_index, u.content_type, u.content_encoding, u.remote_addr,
       u.payload::jsonb, u.body_text, u.body_bytes
from unnest(%s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::bytea[])
    as u(id, request_id, batch_index, content_type, content_encoding, remote_addr, payload, body_text, body_bytes)
"""

FIND_DEVICES = "select id from ingest.device where id = any(%s::bigint[])"

TOUCH_DEVICES = """
insert into ingest.device (id, origin)
select id, 'legacy' from unnest(%s::bigint[]) as u(id)
on conflict (id) do update set last_seen_at = now()
"""

FIND_STARTUP_DEVICES = """
select id, serial from ingest.device where serial = any(%s::text[]) or id = any(%s::bigint[])
"""

UPSERT_STARTUP_DEVICES = """
insert into ingest.device as d (id, serial, firmware, origin, provisioned_at)
select u.id, u.serial, u.firmware, u.origin, now()
from unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) as u(id, serial, firmware, origin)
on conflict (id) do update
    set serial = excluded.serial,
        firmware = coalesce(excluded.firmware, d.firmware),
        provisioned_at = coalesce(d.provisioned_at, now()),
        last_seen_at = now()
"""

INSERT_STARTUPS = """
insert into ingest.device_startup (raw_record_id, device_id, serial, firmware, started_at, upgraded_legacy)
select u.raw_id, u.device_id, u.serial, u.firmware, to_timestamp(u.started_at), u.upgraded
from unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[], %s::float8[], %s::bool[])
    as u(raw_id, device_id, serial, firmware, started_at, upgraded)
"""

INSERT_FACTS = """
insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value)
select u.raw_id, u.device_id, u.type_id, to_timestamp(u.ts), u.value
from unnest(%s::bigint[], %s::bigint[], %s::smallint[], %s::float8[], %s::float8[])
    as u(raw_id, device_id, type_id, ts, value)
on conflict do nothing
returning id, raw_record_id
"""

# The facts a replayed event repeats; ON CONFLICT above waited for any concurrent writer, so the
# fact it conflicted with is visible to this statement.
INSERT_DUPLICATES = """
insert into ingest.raw_duplicate (raw_record_id, processed_record_id)
select u.raw_id, p.id
from unnest(%s::bigint[], %s::bigint[], %s::smallint[], %s::float8[], %s::float8[])
    as u(raw_id, device_id, type_id, ts, value)
join ingest.processed_record as p
    on p.device_id = u.device_id
    and p.record_type_id = u.type_id
    and p.record_time = to_timestamp(u.ts)
    and p.value = u.value
returning raw_record_id, processed_record_id
"""

INSERT_ERRORS = """
insert into ingest.ingest_error (raw_record_id, reason, detail, event_type, device_id)
select * from unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bigint[])
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
                    "serial_conflict",
                    f"serial {s.serial} already belongs to device {owner}",
                    "device_startup",
                    s.device_id,
                )
                continue
            if current is not None and current != s.serial:
                decided[pos] = Rejection(
                    "invalid",
                    "device_conflict",
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
    """Store `items` inside the caller's transaction. Returns the results in input order and the
    device ids to remember in the cache once the transaction has committed."""
    now = time.monotonic()
    raw_ids = await _column(conn, ALLOCATE_RAW_IDS, len(items))
    outcomes = [item.outcome for item in items]

    # Telemetry for provisioned ids (>= 2^31) needs the device to exist; legacy ids are created lazily.
    unknown_provisioned = sorted(
        {
            o.device_id
            for o in outcomes
            if isinstance(o, Telemetry) and o.device_id > LEGACY_DEVICE_ID_MAX and o.device_id not in cache.touched
        }
    )
    if unknown_provisioned:
        missing = set(unknown_provisioned) - set(await _column(conn, FIND_DEVICES, unknown_provisioned))
        for pos, o in enumerate(outcomes):
            if isinstance(o, Telemetry) and o.device_id in missing:
                outcomes[pos] = Rejection(
                    "invalid",
                    "unknown_device",
                    f"device {o.device_id} was never provisioned",
                    None,
                    o.device_id,
                )

    startups = [(pos, o) for pos, o in enumerate(outcomes) if isinstance(o, Startup)]
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
            startup_devices[pos] = verdict
            upgraded[pos] = s.device_id is not None
            rows[verdict] = (
                s.serial,
                s.firmware,
                "legacy" if verdict <= LEGACY_DEVICE_ID_MAX else "provisioned",
            )
        ids = sorted(rows)
        await conn.execute(
            UPSERT_STARTUP_DEVICES,
            (ids, [rows[i][0] for i in ids], [rows[i][1] for i in ids], [rows[i][2] for i in ids]),
        )

    # Sorted, so concurrent transactions lock device rows in the same order and cannot deadlock.
    # Provisioned ids here exist already (checked above), so only legacy ids can be inserted.
    touch = sorted({o.device_id for o in outcomes if isinstance(o, Telemetry) and cache.needs_touch(o.device_id, now)})
    if touch:
        await conn.execute(TOUCH_DEVICES, (touch,))

    await conn.execute(
        INSERT_RAW,
        (
            raw_ids,
            [item.meta.request_id for item in items],
            [item.batch_index for item in items],
            [item.meta.content_type for item in items],
            [item.meta.content_encoding for item in items],
            [item.meta.remote_addr for item in items],
            [item.body.payload for item in items],
            [item.body.body_text for item in items],
            [item.body.body_bytes for item in items],
        ),
    )

    results: list[ItemResult | None] = [None] * len(items)
    facts = [(pos, o) for pos, o in enumerate(outcomes) if isinstance(o, Telemetry)]
    if facts:
        columns = (
            [raw_ids[pos] for pos, _ in facts],
            [o.device_id for _, o in facts],
            [o.record_type_id for _, o in facts],
            [o.record_time for _, o in facts],
            [o.value for _, o in facts],
        )
        cur = await conn.execute(INSERT_FACTS, columns)
        inserted = {raw_id: fact_id for fact_id, raw_id in await cur.fetchall()}
        repeats = [i for i, (pos, _) in enumerate(facts) if raw_ids[pos] not in inserted]
        duplicates: dict[int, int] = {}
        if repeats:
            cur = await conn.execute(INSERT_DUPLICATES, tuple([col[i] for i in repeats] for col in columns))
            duplicates = dict(await cur.fetchall())
        for pos, _ in facts:
            raw_id = raw_ids[pos]
            if raw_id in inserted:
                results[pos] = ItemResult(raw_id, "ok", processed_id=inserted[raw_id])
            elif raw_id in duplicates:
                results[pos] = ItemResult(raw_id, "duplicate", processed_id=duplicates[raw_id])
            else:  # cannot happen while uq_processed_event holds; never leave a raw row without outcome
                outcomes[pos] = Rejection("error", "internal_error", "fact neither stored nor found as duplicate")

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

    errors = [(pos, o) for pos, o in enumerate(outcomes) if isinstance(o, Rejection)]
    if errors:
        await conn.execute(
            INSERT_ERRORS,
            (
                [raw_ids[pos] for pos, _ in errors],
                [o.reason for _, o in errors],
                [o.detail for _, o in errors],
                [o.event_type for _, o in errors],
                [o.device_id for _, o in errors],
            ),
        )
        for pos, o in errors:
            results[pos] = _rejected(raw_ids[pos], o)

    final = [r for r in results if r is not None]
    assert len(final) == len(items), "every item must have exactly one outcome"
    return final, set(touch) | set(startup_devices.values())
