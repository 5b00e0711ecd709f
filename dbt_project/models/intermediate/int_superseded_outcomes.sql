-- The history a replay leaves: every error that is no longer its raw row's current outcome, with
-- the run that superseded it and what replaced it. ingest_parse shows the current outcomes only.
with

supersessions as (

    select * from {{ ref('stg_ingest__outcome_supersessions') }}

),

raw_records as (

    select * from {{ ref('stg_ingest__raw_records') }}

),

replay_runs as (

    select * from {{ ref('stg_ingest__replay_runs') }}

),

superseded as (

    select
        supersessions.raw_record_id,
        raw_records.received_at,
        supersessions.superseded_reason as reason,
        supersessions.superseded_replay_run_id,
        supersessions.replay_run_id as superseded_by_replay_run_id,
        supersessions.superseded_by_outcome,
        supersessions.superseded_at,
        replay_runs.requested_by as superseded_by

    from supersessions
    inner join raw_records
        on supersessions.raw_record_id = raw_records.raw_record_id
    inner join replay_runs
        on supersessions.replay_run_id = replay_runs.replay_run_id

)

select * from superseded
