-- Invariant 2: every raw ledger row ends as exactly one of a fact, a duplicate, a provisioned
-- startup or an ingest_error. A row returned here has none (a silent drop) or several (a
-- double write). Reads the source tables, not the models, so a modelling bug cannot hide it.
with

raw_records as (

    select id as raw_record_id from {{ source('ingest', 'raw_record') }}

),

outcomes as (

    select raw_record_id from {{ source('ingest', 'processed_record') }}
    union all
    select raw_record_id from {{ source('ingest', 'raw_duplicate') }}
    union all
    select raw_record_id from {{ source('ingest', 'device_startup') }}
    union all
    select raw_record_id from {{ source('ingest', 'ingest_error') }}

),

outcome_counts as (

    select raw_record_id, count(*) as outcomes
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
