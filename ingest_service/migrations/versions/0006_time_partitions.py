"""Daily range partitions for the ledger, the facts and the outcomes (docs/lifecycle.md).

| table            | partition key | why that key                                                      |
|------------------|---------------|-------------------------------------------------------------------|
| raw_record       | received_at   | arrival: the ledger is written in arrival order, retention by age |
| processed_record | record_time   | the event's own time: it is in uq_processed_event, so the fact's  |
|                  |               | idempotency stays global (a replay of last month's event meets    |
|                  |               | the original in last month's partition)                           |
| raw_duplicate    | detected_at   | `now()` of the statement that wrote the ledger row: the same day   |
| device_startup   | processed_at  | as the raw row, so a ledger day and its outcomes are archived and |
| ingest_error     | first_seen_at | dropped together                                                  |

PostgreSQL has no unique index across partitions: every primary key and unique index now includes
the partition key. What that means for each one:
- `uq_processed_event (device_id, record_type_id, record_time, value)` contains the key: global.
- the ids (`raw_record.id`, `processed_record.id`) come from sequences only (the write functions
  and the column defaults), so they are unique by construction; the keys are (id, key).
- `uq_processed_by_raw` becomes (raw_record_id, record_time): one fact per raw row is kept by the
  writer, which inserts at most one fact for each ledger row it has just created.
- foreign keys to a partitioned table would need its partition key in the referencing row: the
  outcomes' and facts' keys to `raw_record`, the duplicates' to `processed_record` and
  `startup_failure`'s to `raw_record` are dropped. The raw row and its outcome are written by one
  statement (`ingest.write_items`) or one transaction; dbt's relationships tests on the sources
  check them. The keys to `device` and `record_type` (not partitioned) stay.
- `delivery` (door, key) and `startup_failure` are not partitioned: their keys hold as before.

Each partitioned table has a default partition as a safety net: a row with no day partition lands
there instead of failing its batch, and the `ingest_default_partitions_empty` check fails while it
holds any row. The ledger's immutability: the row trigger (no UPDATE/DELETE) on a partitioned table
is cloned to every partition; the statement trigger (no TRUNCATE) is not, so
`ingest.create_day_partition()` adds it to each ledger partition.

Existing data: the five tables are renamed, recreated partitioned, their rows copied (ids and
values unchanged; partitions for every day that has rows), the counts compared, then the old
tables dropped, in the migration's one transaction. Views on the old tables (dbt's staging views)
are dropped with them: run `dbt build` (the hourly job) after upgrading a database that has them.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# table -> partition key
PARTITIONED = {
    "raw_record": "received_at",
    "processed_record": "record_time",
    "raw_duplicate": "detected_at",
    "device_startup": "processed_at",
    "ingest_error": "first_seen_at",
}

# Partitions created ahead by the migration (the maintenance asset keeps doing it daily).
DAYS_AHEAD = 7

SET_ASIDE = """
-- Foreign keys to the tables being partitioned (a partitioned parent would need the partition key in them).
do $$
declare
    fk record;
begin
    for fk in
        select conrelid::regclass as tbl, conname
        from pg_constraint
        where contype = 'f'
          and confrelid in ('ingest.raw_record'::regclass, 'ingest.processed_record'::regclass)
    loop
        execute format('alter table %s drop constraint %I', fk.tbl, fk.conname);
    end loop;
end
$$;

-- The old tables and their indexes step aside under an `_0005` suffix.
do $$
declare
    t text;
    ix record;
begin
    foreach t in array array['raw_record', 'processed_record', 'raw_duplicate', 'device_startup', 'ingest_error'] loop
        for ix in
            select i.relname from pg_index x join pg_class i on i.oid = x.indexrelid
            where x.indrelid = format('ingest.%I', t)::regclass
        loop
            execute format('alter index ingest.%I rename to %I', ix.relname, ix.relname || '_0005');
        end loop;
        execute format('alter table ingest.%I rename to %I', t, t || '_0005');
    end loop;
end
$$;
alter sequence ingest.raw_record_id_seq owned by none;
"""

CREATE = """
create table ingest.raw_record (
    id bigint not null default nextval('ingest.raw_record_id_seq'),
    received_at timestamptz not null default now(),
    request_id text not null,
    batch_index integer not null,
    content_type text,
    content_encoding text,
    remote_addr text,
    payload jsonb,
    body_text text,
    body_bytes bytea,
    constraint raw_record_one_body check (num_nonnulls(payload, body_text, body_bytes) = 1),
    constraint raw_record_pkey primary key (id, received_at)
) partition by range (received_at);
alter sequence ingest.raw_record_id_seq owned by ingest.raw_record.id;
comment on table ingest.raw_record is
    'Immutable ledger: one row per received item (a batch of N items is N rows), stored before the answer. '
    'Daily partitions by received_at.';
create index ix_raw_record_received_at on ingest.raw_record (received_at);
create trigger raw_record_no_update_delete before update or delete on ingest.raw_record
    for each row execute function ingest.raw_record_is_immutable();
create trigger raw_record_no_truncate before truncate on ingest.raw_record
    for each statement execute function ingest.raw_record_is_immutable();

create table ingest.processed_record (
    id bigint generated by default as identity,
    raw_record_id bigint not null,
    device_id bigint not null,
    record_type_id smallint not null,
    record_time timestamptz not null,
    value double precision not null,
    ingested_at timestamptz not null default now(),
    constraint processed_record_pkey primary key (id, record_time),
    constraint processed_record_device_id_fkey foreign key (device_id) references ingest.device (id),
    constraint processed_record_record_type_id_fkey foreign key (record_type_id) references ingest.record_type (id)
) partition by range (record_time);
comment on table ingest.processed_record is
    'Facts: one validated telemetry reading, value in the native unit of its record type. '
    'Daily partitions by record_time.';
create unique index uq_processed_by_raw on ingest.processed_record (raw_record_id, record_time);
create unique index uq_processed_event on ingest.processed_record (device_id, record_type_id, record_time, value);
create index ix_processed_device_time on ingest.processed_record (device_id, record_time);
create index ix_processed_type_time on ingest.processed_record (record_type_id, record_time);
create index ix_processed_ingested_at on ingest.processed_record (ingested_at);

create table ingest.raw_duplicate (
    raw_record_id bigint not null,
    processed_record_id bigint not null,
    detected_at timestamptz not null default now(),
    constraint raw_duplicate_pkey primary key (raw_record_id, detected_at)
) partition by range (detected_at);
comment on table ingest.raw_duplicate is
    'Outcome: the raw row repeats an existing fact (idempotent replay); points at that fact. '
    'Daily partitions by detected_at (the raw row''s day).';

create table ingest.device_startup (
    raw_record_id bigint not null,
    device_id bigint not null,
    serial text not null,
    firmware text,
    started_at timestamptz not null,
    upgraded_legacy boolean not null default false,
    processed_at timestamptz not null default now(),
    constraint device_startup_pkey primary key (raw_record_id, processed_at),
    constraint device_startup_device_id_fkey foreign key (device_id) references ingest.device (id)
) partition by range (processed_at);
comment on table ingest.device_startup is
    'Outcome: an authenticated device_startup that provisioned (or found) its device. '
    'Daily partitions by processed_at (the raw row''s day).';
create index ix_device_startup_device on ingest.device_startup (device_id);

create table ingest.ingest_error (
    raw_record_id bigint not null,
    reason text not null,
    detail text not null,
    event_type text,
    device_id bigint,
    first_seen_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    constraint ingest_error_pkey primary key (raw_record_id, first_seen_at)
) partition by range (first_seen_at);
comment on table ingest.ingest_error is
    'Outcome: the raw row was rejected; reason is a stable machine-readable code, detail is for humans. '
    'Daily partitions by first_seen_at (the raw row''s day).';
create index ix_ingest_error_reason on ingest.ingest_error (reason, first_seen_at);
"""

# One rule for a day partition, used by the migration, `iot-platform migrate` and the maintenance
# asset (ingest_service/lifecycle/partitions.py). Days are UTC days; names are <table>_pYYYYMMDD.
FUNCTIONS = """
create or replace function ingest.create_day_partition(p_table text, p_day date) returns boolean
language plpgsql
as $fn$
declare
    part text := format('%s_p%s', p_table, to_char(p_day, 'YYYYMMDD'));
begin
    if to_regclass(format('ingest.%I', part)) is not null then
        return false;
    end if;
    execute format(
        'create table ingest.%I partition of ingest.%I for values from (%L) to (%L)',
        part, p_table,
        to_char(p_day, 'YYYY-MM-DD') || ' 00:00:00+00', to_char(p_day + 1, 'YYYY-MM-DD') || ' 00:00:00+00'
    );
    if p_table = 'raw_record' then
        -- Statement triggers are not cloned to partitions: a TRUNCATE of the partition itself is refused here.
        execute format(
            'create trigger raw_record_no_truncate before truncate on ingest.%I '
            'for each statement execute function ingest.raw_record_is_immutable()',
            part
        );
    end if;
    return true;
end
$fn$;
comment on function ingest.create_day_partition(text, date) is
    'Creates ingest.<table>_pYYYYMMDD for one UTC day unless it exists; true when created.';

create or replace function ingest.ensure_day_partitions(p_from date, p_to date) returns setof text
language plpgsql
as $fn$
declare
    t text;
    d date;
begin
    for t in
        select c.relname
        from pg_partitioned_table as p
        join pg_class as c on c.oid = p.partrelid
        where c.relnamespace = 'ingest'::regnamespace
        order by c.relname
    loop
        d := p_from;
        while d <= p_to loop
            begin
                if ingest.create_day_partition(t, d) then
                    return next format('%s_p%s', t, to_char(d, 'YYYYMMDD'));
                end if;
            exception when check_violation then
                -- The default partition holds rows of that day: the other days are still created,
                -- and the default-partition check reports the rows.
                raise warning 'ingest.%_p%: not created, %', t, to_char(d, 'YYYYMMDD'), sqlerrm;
            end;
            d := d + 1;
        end loop;
    end loop;
end
$fn$;
comment on function ingest.ensure_day_partitions(date, date) is
    'Creates the missing day partitions of every partitioned ingest table for [p_from, p_to]; returns their names.';
"""

DEFAULTS = """
create table ingest.raw_record_default partition of ingest.raw_record default;
create trigger raw_record_no_truncate before truncate on ingest.raw_record_default
    for each statement execute function ingest.raw_record_is_immutable();
create table ingest.processed_record_default partition of ingest.processed_record default;
create table ingest.raw_duplicate_default partition of ingest.raw_duplicate default;
create table ingest.device_startup_default partition of ingest.device_startup default;
create table ingest.ingest_error_default partition of ingest.ingest_error default;
"""

COPY = """
insert into ingest.raw_record
    (id, received_at, request_id, batch_index, content_type, content_encoding, remote_addr, payload, body_text,
     body_bytes)
select id, received_at, request_id, batch_index, content_type, content_encoding, remote_addr, payload, body_text,
       body_bytes
from ingest.raw_record_0005;
insert into ingest.processed_record
    (id, raw_record_id, device_id, record_type_id, record_time, value, ingested_at)
select id, raw_record_id, device_id, record_type_id, record_time, value, ingested_at
from ingest.processed_record_0005;
insert into ingest.raw_duplicate (raw_record_id, processed_record_id, detected_at)
select raw_record_id, processed_record_id, detected_at from ingest.raw_duplicate_0005;
insert into ingest.device_startup
    (raw_record_id, device_id, serial, firmware, started_at, upgraded_legacy, processed_at)
select raw_record_id, device_id, serial, firmware, started_at, upgraded_legacy, processed_at
from ingest.device_startup_0005;
insert into ingest.ingest_error (raw_record_id, reason, detail, event_type, device_id, first_seen_at, last_seen_at)
select raw_record_id, reason, detail, event_type, device_id, first_seen_at, last_seen_at from ingest.ingest_error_0005;

do $$
declare
    t text;
    old_count bigint;
    new_count bigint;
begin
    foreach t in array array['raw_record', 'processed_record', 'raw_duplicate', 'device_startup', 'ingest_error'] loop
        execute format('select count(*) from ingest.%I', t || '_0005') into old_count;
        execute format('select count(*) from ingest.%I', t) into new_count;
        if old_count <> new_count then
            raise exception 'ingest.%: % rows copied of %', t, new_count, old_count;
        end if;
    end loop;
end
$$;

-- The facts' identity sequence continues after the copied ids.
select setval(
    pg_get_serial_sequence('ingest.processed_record', 'id'),
    greatest(
        (select max(id) from ingest.processed_record_0005), (select last_value from ingest.processed_record_id_seq)
    ),
    (select max(id) from ingest.processed_record_0005) is not null
        or (select is_called from ingest.processed_record_id_seq)
);

drop table ingest.raw_duplicate_0005, ingest.device_startup_0005, ingest.ingest_error_0005,
    ingest.processed_record_0005, ingest.raw_record_0005 cascade;
do $$
begin
    -- Created beside the old one as processed_record_id_seq1: it takes the usual name back.
    execute format('alter sequence %s rename to processed_record_id_seq',
                   pg_get_serial_sequence('ingest.processed_record', 'id'));
end
$$;
"""

# As in 0002: only when the group roles exist (a role-less server gets them from a DBA later).
GRANTS = """
grant select, insert on
    ingest.raw_record, ingest.processed_record, ingest.raw_duplicate, ingest.device_startup, ingest.ingest_error
    to iot_ingest;
revoke update, delete, truncate on ingest.raw_record from iot_ingest;
grant usage on all sequences in schema ingest to iot_ingest;
grant select on
    ingest.raw_record, ingest.processed_record, ingest.raw_duplicate, ingest.device_startup, ingest.ingest_error
    to iot_dagster;
"""


def upgrade() -> None:
    bind = op.get_bind()
    op.execute(SET_ASIDE)
    op.execute(CREATE)
    op.execute(FUNCTIONS)
    op.execute(DEFAULTS)
    # A partition for every day that has rows (not for the empty days between), and the days ahead.
    for table, key in PARTITIONED.items():
        bind.exec_driver_sql(
            f"select ingest.create_day_partition('{table}', d) "
            f"from (select distinct ({key} at time zone 'UTC')::date as d from ingest.{table}_0005) as days"
        )
    bind.exec_driver_sql(
        f"select count(*) from ingest.ensure_day_partitions((now() at time zone 'UTC')::date - 1, "
        f"(now() at time zone 'UTC')::date + {DAYS_AHEAD})"
    )
    op.execute(COPY)
    present = bind.exec_driver_sql("select count(*) from pg_roles where rolname in ('iot_ingest', 'iot_dagster')")
    if present.scalar() == 2:
        op.execute(GRANTS)


def downgrade() -> None:
    # Schema changes are additive: roll back by redeploying the previous API.
    raise NotImplementedError("additive migrations are not rolled back")
