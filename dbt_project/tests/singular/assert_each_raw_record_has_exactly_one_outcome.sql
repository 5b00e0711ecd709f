-- Invariant 2: every raw ledger row has exactly one CURRENT outcome: a fact, a duplicate, a
-- provisioned startup or an error. A row returned here has none (a silent drop) or several (a
-- double write). Reads the staging views, which only rename the ingest tables, except the errors:
-- those are the current ones (ingest.current_ingest_error), since a replay supersedes an error
-- with a fact, a duplicate or another error and keeps the old row (int_superseded_outcomes). Its
-- asset is the ledger's staging model: in Dagster a blocking check, so a failure stops the marts
-- and metrics of the run, which would be computed from an incomplete ledger.
{{ config(meta={'dagster': {'ref': {'name': 'stg_ingest__raw_records'}}}) }}

-- With test_since (the hourly run), only ledger ids from the oldest one received in the window on,
-- on both sides, so that an outcome is never compared without its raw row.

with

window_start as (

    select coalesce(min(raw_record_id), 0) as first_id
    from {{ ref('stg_ingest__raw_records') }}
    where {{ in_test_window('received_at') }}

),

raw_records as (

    select raw_record_id from {{ ref('stg_ingest__raw_records') }}
    where raw_record_id >= (select window_start.first_id from window_start)

),

outcomes as (

    select raw_record_id from {{ ref('stg_ingest__processed_records') }}
    where raw_record_id >= (select window_start.first_id from window_start)
    union all
    select raw_record_id from {{ ref('stg_ingest__raw_duplicates') }}
    where raw_record_id >= (select window_start.first_id from window_start)
    union all
    select raw_record_id from {{ ref('stg_ingest__device_startups') }}
    where raw_record_id >= (select window_start.first_id from window_start)
    union all
    select raw_record_id from {{ ref('stg_ingest__ingest_errors') }}
    where raw_record_id >= (select window_start.first_id from window_start)

),

outcome_counts as (

    select
        raw_record_id,
        count(*) as outcomes
    from outcomes
    group by raw_record_id

)

select
    coalesce(raw_records.raw_record_id, outcome_counts.raw_record_id) as raw_record_id,
    coalesce(outcome_counts.outcomes, 0) as outcomes
from raw_records
full outer join outcome_counts
    on raw_records.raw_record_id = outcome_counts.raw_record_id
where coalesce(outcome_counts.outcomes, 0) <> 1 or raw_records.raw_record_id is null
