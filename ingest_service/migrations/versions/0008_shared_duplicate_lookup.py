"""ingest.link_duplicates(): the one home of "a fact that repeats a stored fact is a duplicate".

Live ingest (`write_items`, 0003) and replay (`replay_items`, 0007) each carried their own copy of
the duplicate lookup: the facts ON CONFLICT skipped are joined to the stored fact they repeat, a
`raw_duplicate` row links them, and whatever is neither stored nor found is "lost" (impossible while
`uq_processed_event` holds). The two copies had to change together; now both call this function,
and only what differs stays with them: live ingest records a lost fact as an `internal_error`, a
replay leaves the row's current error in place.

`p_eligible_raw_ids` (null: all) narrows the facts to the raw rows the caller writes: a replay's
batch holds rows another run already changed, which are not written again.

A separate statement from the caller's fact insert, so it runs with a new snapshot (READ
COMMITTED) that sees the facts ON CONFLICT waited for: a concurrent writer's, or one repeated
within the same group. Behaviour is unchanged; the write path's common case (every fact new)
returns before calling it.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

LINK_DUPLICATES = """
create or replace function ingest.link_duplicates(
    p_raw_ids bigint[], f_pos int[], f_device_id bigint[], f_type_id smallint[], f_ts float8[],
    f_value float8[], p_stored_raw_ids bigint[], p_eligible_raw_ids bigint[],
    out duplicate_raw_ids bigint[], out duplicate_fact_ids bigint[], out lost_raw_ids bigint[]
)
language plpgsql
as $fn$
begin
    -- (Joins on unnest, not `= any(array)`, which is quadratic in the group.)
    with candidates as (
        select p_raw_ids[f.pos] as raw_id, f.device_id, f.type_id, f.ts, f.value
        from unnest(f_pos, f_device_id, f_type_id, f_ts, f_value) as f(pos, device_id, type_id, ts, value)
        where p_eligible_raw_ids is null
            or p_raw_ids[f.pos] in (select unnest(p_eligible_raw_ids))
    ),
    repeats as (
        select c.*
        from candidates as c
        left join unnest(p_stored_raw_ids) as stored(raw_id) on stored.raw_id = c.raw_id
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

    select array_agg(raw_id) into lost_raw_ids from (
        select p_raw_ids[f.pos] as raw_id
        from unnest(f_pos) as f(pos)
        where p_eligible_raw_ids is null
            or p_raw_ids[f.pos] in (select unnest(p_eligible_raw_ids))
        except
        select unnest(coalesce(p_stored_raw_ids, '{}') || coalesce(duplicate_raw_ids, '{}'))
    ) as lost;
end
$fn$;
"""

WRITE_ITEMS = """
create or replace function ingest.write_items(
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
declare
    lost bigint[];
begin
    -- Legacy devices are created on first sight; known ones get last_seen_at. Sorted by the
    -- caller, so concurrent groups lock device rows in the same order and cannot deadlock.
    if cardinality(touch_device_ids) > 0 then
        insert into ingest.device (id, origin)
        select id, 'legacy' from unnest(touch_device_ids) as u(id)
        on conflict (id) do update set last_seen_at = now();
    end if;

    -- Ledger rows, facts and known errors. `raw` is materialized once, so each item gets one id,
    -- in input order. Facts that repeat one already stored are skipped here.
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

    select d.duplicate_raw_ids, d.duplicate_fact_ids, d.lost_raw_ids
    into duplicate_raw_ids, duplicate_fact_ids, lost
    from ingest.link_duplicates(raw_ids, f_pos, f_device_id, f_type_id, f_ts, f_value, fact_raw_ids, null) as d;

    -- Cannot happen while uq_processed_event holds; a raw row is never left without an outcome.
    with stored as (
        insert into ingest.ingest_error (raw_record_id, reason, detail)
        select raw_id, 'internal_error', 'fact neither stored nor found as duplicate'
        from unnest(lost) as l(raw_id)
        returning raw_record_id
    )
    select array_agg(raw_record_id) into lost_raw_ids from stored;
end
$fn$;
"""

REPLAY_ITEMS = """
create or replace function ingest.replay_items(
    p_replay_run_id bigint, p_raw_ids bigint[],
    f_pos int[], f_device_id bigint[], f_type_id smallint[], f_ts float8[], f_value float8[],
    e_pos int[], e_reason text[], e_detail text[], e_event_type text[], e_device_id bigint[],
    touch_device_ids bigint[],
    out fact_raw_ids bigint[], out fact_ids bigint[],
    out duplicate_raw_ids bigint[], out duplicate_fact_ids bigint[],
    out error_raw_ids bigint[], out lost_raw_ids bigint[]
)
language plpgsql
as $fn$
declare
    cur_raw bigint[];
    cur_reason text[];
    cur_run bigint[];
    eligible_facts bigint;
begin
    -- The rows of the batch whose current outcome is an error of another run: only those are
    -- written (a row this run already changed, e.g. before an interruption, is left alone).
    select coalesce(array_agg(c.raw_record_id), '{}'), array_agg(c.reason), array_agg(c.replay_run_id)
    into cur_raw, cur_reason, cur_run
    from ingest.current_ingest_error as c
    where c.raw_record_id = any(p_raw_ids) and c.replay_run_id is distinct from p_replay_run_id;

    -- Legacy devices whose telemetry was all rejected until now are created; a replay does not
    -- see a device, so last_seen_at stays. Sorted by the caller, as in write_items.
    if cardinality(touch_device_ids) > 0 then
        insert into ingest.device (id, origin)
        select id, 'legacy' from unnest(touch_device_ids) as u(id)
        on conflict (id) do nothing;
    end if;

    -- Facts, exactly as write_items writes them: one that repeats a stored fact is skipped here.
    with eligible as (
        select f.pos, f.device_id, f.type_id, f.ts, f.value
        from unnest(f_pos, f_device_id, f_type_id, f_ts, f_value) as f(pos, device_id, type_id, ts, value)
        join unnest(cur_raw) as c(raw_id) on c.raw_id = p_raw_ids[f.pos]
    ),
    facts as (
        insert into ingest.processed_record (raw_record_id, device_id, record_type_id, record_time, value)
        select p_raw_ids[pos], device_id, type_id, to_timestamp(ts), value
        from eligible
        order by pos
        on conflict do nothing
        returning id, raw_record_id
    )
    select (select count(*) from eligible), (select array_agg(raw_record_id) from facts),
           (select array_agg(id) from facts)
    into eligible_facts, fact_raw_ids, fact_ids;

    -- Repeats of a stored fact are duplicates; a lost fact (cannot happen) keeps its error.
    if coalesce(cardinality(fact_raw_ids), 0) < eligible_facts then
        select d.duplicate_raw_ids, d.duplicate_fact_ids, d.lost_raw_ids
        into duplicate_raw_ids, duplicate_fact_ids, lost_raw_ids
        from ingest.link_duplicates(
            p_raw_ids, f_pos, f_device_id, f_type_id, f_ts, f_value, fact_raw_ids, cur_raw
        ) as d;
    end if;

    -- Rows that still fail: a new error only when the reason changed (the same reason is no change).
    with changed as (
        insert into ingest.replay_error (raw_record_id, replay_run_id, reason, detail, event_type, device_id)
        select p_raw_ids[e.pos], p_replay_run_id, e.reason, e.detail, e.event_type, e.device_id
        from unnest(e_pos, e_reason, e_detail, e_event_type, e_device_id)
            as e(pos, reason, detail, event_type, device_id)
        join unnest(cur_raw, cur_reason) as c(raw_id, reason) on c.raw_id = p_raw_ids[e.pos]
        where e.reason <> c.reason
        returning raw_record_id
    )
    select array_agg(raw_record_id) into error_raw_ids from changed;

    -- Each changed row's current error is superseded by this run.
    insert into ingest.outcome_supersession
        (raw_record_id, replay_run_id, superseded_replay_run_id, superseded_reason, outcome)
    select c.raw_id, p_replay_run_id, c.run_id, c.reason, o.outcome
    from unnest(cur_raw, cur_reason, cur_run) as c(raw_id, reason, run_id)
    join (
        select unnest(coalesce(fact_raw_ids, '{}')) as raw_id, 'fact' as outcome
        union all
        select unnest(coalesce(duplicate_raw_ids, '{}')), 'duplicate'
        union all
        select unnest(coalesce(error_raw_ids, '{}')), 'error'
    ) as o using (raw_id)
    order by c.raw_id;
end
$fn$;
"""


def upgrade() -> None:
    op.execute(LINK_DUPLICATES)
    op.execute(WRITE_ITEMS)
    op.execute(REPLAY_ITEMS)


def downgrade() -> None:
    # Schema changes are additive: roll back by redeploying the previous API.
    raise NotImplementedError("additive migrations are not rolled back")
