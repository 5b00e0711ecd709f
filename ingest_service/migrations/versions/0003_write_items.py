"""ingest.write_items(): a group of items written by one statement, so it needs no BEGIN/COMMIT.

The write path's common case (telemetry and rejected items of known or legacy devices) used a
transaction of up to four statements: touch devices, ledger + facts + errors, duplicates of
replayed facts, errors for facts neither stored nor found. As one PL/pgSQL call it is one statement,
atomic on its own, and one round trip in autocommit. Each statement inside the function still sees
a fresh snapshot (READ COMMITTED), which the duplicate lookup needs: ON CONFLICT waited for any
concurrent writer of the same fact, and the next statement sees that writer's committed row.

SECURITY INVOKER (the default): the caller's table privileges apply, as for plain statements.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WRITE_ITEMS = """
create function ingest.write_items(
    p_request_id text[], p_batch_index int[], p_content_type text[], p_content_encoding text[],
    p_remote_addr text[], p_payload text[], p_body_text text[], p_body_bytes bytea[],
    f_pos int[], f_device_id bigint[], f_type_id smallint[], f_ts float8[], f_value float8[],
    e_pos int[], e_reason text[], e_detail text[], e_event_type text[], e_device_id bigint[],
    touch_device_ids bigint[],
    out raw_ids bigint[], out fact_raw_ids bigint[], out fact_ids bigint[],
    out duplicate_raw_ids bigint[], out duplicate_fact_ids bigint[], out lost_raw_ids bigint[]
)
language plpgsql
as $fn$
begin
    -- Legacy devices are created on first sight; known ones get last_seen_at. Sorted by the
    -- caller, so concurrent groups lock device rows in the same order and cannot deadlock.
    if cardinality(touch_device_ids) > 0 then
        insert into ingest.device (id, origin)
        select id, 'legacy' from unnest(touch_device_ids) as u(id)
        on conflict (id) do update set last_seen_at = now();
    end if;

    -- Ledger rows, facts and known errors. `raw` is materialized once, so each item gets one id,
    -- in input order; the facts' and errors' foreign keys to the ledger are checked at the end of
    -- the statement, when the ledger rows exist. Facts that repeat one already stored are skipped.
    with raw as materialized (
        select nextval('ingest.raw_record_id_seq') as id, u.*
        from unnest(p_request_id, p_batch_index, p_content_type, p_content_encoding, p_remote_addr,
                    p_payload, p_body_text, p_body_bytes)
            with ordinality
            as u(request_id, batch_index, content_type, content_encoding, remote_addr, payload,
                 body_text, body_bytes, pos)
    ),
    ledger as (
        insert into ingest.raw_record
            (id, request_id, batch_index, content_type, content_encoding, remote_addr, payload,
             body_text, body_bytes)
        select id, request_id, batch_index, content_type, content_encoding, remote_addr,
               payload::jsonb, body_text, body_bytes
        from raw
        order by pos
    ),
    facts as (
        insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value)
        select raw.id, f.device_id, f.type_id, to_timestamp(f.ts), f.value
        from unnest(f_pos, f_device_id, f_type_id, f_ts, f_value) as f(pos, device_id, type_id, ts, value)
        join raw using (pos)
        order by f.pos
        on conflict do nothing
        returning id, raw_record_id
    ),
    errors as (
        insert into ingest.ingest_error (raw_record_id, reason, detail, event_type, device_id)
        select raw.id, e.reason, e.detail, e.event_type, e.device_id
        from unnest(e_pos, e_reason, e_detail, e_event_type, e_device_id)
            as e(pos, reason, detail, event_type, device_id)
        join raw using (pos)
    )
    select (select array_agg(id order by pos) from raw),
           (select array_agg(raw_record_id) from facts),
           (select array_agg(id) from facts)
    into raw_ids, fact_raw_ids, fact_ids;

    if coalesce(cardinality(fact_raw_ids), 0) = coalesce(cardinality(f_pos), 0) then
        return;  -- every fact is new: the common case ends here
    end if;

    -- Replayed facts (of an earlier request, of a concurrent one, or repeated within this group)
    -- point to the fact they repeat. A new statement, so a new snapshot: it sees them all.
    with repeats as (
        select raw_ids[f.pos] as raw_id, f.device_id, f.type_id, f.ts, f.value
        from unnest(f_pos, f_device_id, f_type_id, f_ts, f_value) as f(pos, device_id, type_id, ts, value)
        left join unnest(fact_raw_ids) as stored(raw_id) on stored.raw_id = raw_ids[f.pos]
        where stored.raw_id is null
    ),
    duplicates as (
        insert into ingest.raw_duplicate (raw_record_id, processed_record_id)
        select r.raw_id, p.id
        from repeats as r
        join ingest.processed_record as p
            on p.device_id = r.device_id
            and p.record_type_id = r.type_id
            and p.record_time = to_timestamp(r.ts)
            and p.value = r.value
        returning raw_record_id, processed_record_id
    )
    select array_agg(raw_record_id), array_agg(processed_record_id)
    into duplicate_raw_ids, duplicate_fact_ids
    from duplicates;

    -- Cannot happen while uq_processed_event holds; a raw row is never left without an outcome.
    with lost as (
        select raw_ids[f.pos] as raw_id from unnest(f_pos) as f(pos)
        except
        select unnest(coalesce(fact_raw_ids, '{}') || coalesce(duplicate_raw_ids, '{}'))
    ),
    stored as (
        insert into ingest.ingest_error (raw_record_id, reason, detail)
        select raw_id, 'internal_error', 'fact neither stored nor found as duplicate' from lost
        returning raw_record_id
    )
    select array_agg(raw_record_id) into lost_raw_ids from stored;
end
$fn$
"""


def upgrade() -> None:
    op.execute(WRITE_ITEMS)


def downgrade() -> None:
    op.execute(
        "drop function if exists ingest.write_items(text[], int[], text[], text[], text[], text[], text[], bytea[],"
        " int[], bigint[], smallint[], float8[], float8[], int[], text[], text[], text[], bigint[], bigint[])"
    )
