-- One row: the dbt invocation that last built the marts. run_started_at is when that build began,
-- so every mart it built holds the data of at least that moment ("data as of" on the dashboard).
-- Downstream of the ledger's outcomes (unused): a build that skips the marts on a failed ledger
-- accounting skips this row too, so it never claims a build that did not happen.
-- depends_on: {{ ref('int_raw_record_outcomes') }}, {{ ref('int_readings_converted') }}
select
    '{{ run_started_at }}'::timestamptz as built_at,
    '{{ invocation_id }}'::text as invocation_id,
    '{{ dbt_version }}'::text as dbt_version
