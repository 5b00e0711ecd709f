-- One row: the dbt invocation that last built the marts. run_started_at is when that build began,
-- so every mart it built holds the data of at least that moment ("data as of" on the dashboard).
select
    '{{ run_started_at.isoformat() }}'::timestamptz as built_at,
    '{{ invocation_id }}'::text as invocation_id,
    '{{ dbt_version }}'::text as dbt_version
