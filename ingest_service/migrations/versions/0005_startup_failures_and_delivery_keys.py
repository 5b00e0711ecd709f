"""Failed startups counted in the database, and delivery keys recorded with the ledger rows.

- `ingest.startup_failure`: one row per failed startup (bad token, stale), written in the same
  transaction as its ledger row and error, and read (under a per-serial advisory lock) by the
  decide stage of every API worker and host: one failed-startup limit for all of them, with no
  eviction. Rows older than the limiter's window are deleted by the API's sweep; the ledger keeps
  every attempt (`ingest_error`).
- `ingest.delivery`: a door's delivery key (HTTP `Idempotency-Key`, an MQTT or JetStream message's
  identity), the SHA-256 of the request's items and their ledger rows. `ingest.write_keyed_items()`
  is `ingest.write_items()` (0003) plus the group's keys, in one statement: the keys are recorded
  atomically with the rows, and a key recorded meanwhile (within the window; an older one is
  taken over) fails the statement whole, with `unique_violation` on `delivery_pkey`, so nothing of
  the group is written. Expired keys are deleted by the API's sweep.

Additive and idempotent; the ledger (`raw_record`) is untouched. Grants for `iot_ingest` as in 0002.

Revision ID: 0005
Revises: 0003
"""

from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = """
create table if not exists ingest.startup_failure (
    raw_record_id bigint primary key references ingest.raw_record (id),
    serial text not null,
    failed_at timestamptz not null default now()
);
comment on table ingest.startup_failure is
    'Failed device_startup attempts (bad token, stale) within the limiter window; older rows are deleted.';
create index if not exists ix_startup_failure_serial on ingest.startup_failure (serial, failed_at);
create index if not exists ix_startup_failure_failed_at on ingest.startup_failure (failed_at);

create table if not exists ingest.delivery (
    door text not null,
    key text not null,
    body_sha256 bytea not null check (octet_length(body_sha256) = 32),
    raw_record_ids bigint[] not null,
    created_at timestamptz not null default now(),
    constraint delivery_pkey primary key (door, key)
);
comment on table ingest.delivery is
    'Delivery keys (HTTP Idempotency-Key, broker message ids): a repeat is answered from these ledger rows.';
create index if not exists ix_delivery_created_at on ingest.delivery (created_at);
"""

WRITE_KEYED_ITEMS = """
create or replace function ingest.write_keyed_items(
    p_request_id text[], p_batch_index int[], p_content_type text[], p_content_encoding text[],
    p_remote_addr text[], p_payload text[], p_body_text text[], p_body_bytes bytea[],
    f_pos int[], f_device_id bigint[], f_type_id smallint[], f_ts float8[], f_value float8[],
    e_pos int[], e_reason text[], e_detail text[], e_event_type text[], e_device_id bigint[],
    touch_device_ids bigint[],
    k_door text[], k_key text[], k_body_sha256 bytea[], k_first_pos int[], k_item_count int[],
    k_window_seconds float8,
    out raw_ids bigint[], out fact_raw_ids bigint[], out fact_ids bigint[],
    out duplicate_raw_ids bigint[], out duplicate_fact_ids bigint[], out lost_raw_ids bigint[]
)
language plpgsql
as $fn$
declare
    recorded bigint;
begin
    select w.raw_ids, w.fact_raw_ids, w.fact_ids, w.duplicate_raw_ids, w.duplicate_fact_ids, w.lost_raw_ids
    into raw_ids, fact_raw_ids, fact_ids, duplicate_raw_ids, duplicate_fact_ids, lost_raw_ids
    from ingest.write_items(
        p_request_id, p_batch_index, p_content_type, p_content_encoding, p_remote_addr, p_payload,
        p_body_text, p_body_bytes, f_pos, f_device_id, f_type_id, f_ts, f_value, e_pos, e_reason,
        e_detail, e_event_type, e_device_id, touch_device_ids
    ) as w;

    -- Sorted, so concurrent groups wait for each other's keys in the same order. A key recorded by
    -- a transaction still running is waited for: once it commits, the key counts as recorded.
    insert into ingest.delivery as d (door, key, body_sha256, raw_record_ids)
    select k.door, k.key, k.body_sha256, raw_ids[k.first_pos : k.first_pos + k.item_count - 1]
    from unnest(k_door, k_key, k_body_sha256, k_first_pos, k_item_count)
        as k(door, key, body_sha256, first_pos, item_count)
    order by k.door, k.key
    on conflict (door, key) do update
        set body_sha256 = excluded.body_sha256,
            raw_record_ids = excluded.raw_record_ids,
            created_at = excluded.created_at
        where d.created_at <= statement_timestamp() - make_interval(secs => k_window_seconds);
    get diagnostics recorded = row_count;
    if recorded < cardinality(k_key) then
        raise unique_violation using
            message = 'a delivery key of this group is already recorded',
            constraint = 'delivery_pkey', schema = 'ingest', table = 'delivery';
    end if;
end
$fn$;
"""

# As in 0002: only when the group roles exist (a role-less server gets them from a DBA later).
GRANTS = """
grant select, insert, delete on ingest.startup_failure to iot_ingest;
grant select, insert, update, delete on ingest.delivery to iot_ingest;
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(WRITE_KEYED_ITEMS)
    present = op.get_bind().exec_driver_sql("select count(*) from pg_roles where rolname = 'iot_ingest'").scalar()
    if present:
        op.execute(GRANTS)


def downgrade() -> None:
    # Schema changes are additive: roll back by redeploying the previous API.
    raise NotImplementedError("additive migrations are not rolled back")
