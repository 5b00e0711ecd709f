-- The history a replay leaves: every error that is no longer its raw row's current outcome, with
-- its detail, the run that superseded it and what replaced it. ingest_parse shows current outcomes.
with

supersessions as (

    select * from {{ ref('stg_ingest__outcome_supersessions') }}

),

live_errors as (

    select * from {{ ref('stg_ingest__ingest_error_rows') }}

),

replay_errors as (

    select * from {{ ref('stg_ingest__replay_errors') }}

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
        coalesce(live_errors.detail, replay_errors.detail) as detail,
        coalesce(live_errors.event_type, replay_errors.event_type) as event_type,
        coalesce(live_errors.device_id, replay_errors.device_id) as device_id,
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
    left join live_errors
        on
            supersessions.superseded_replay_run_id is null
            and supersessions.raw_record_id = live_errors.raw_record_id
    left join replay_errors
        on
            supersessions.raw_record_id = replay_errors.raw_record_id
            and supersessions.superseded_replay_run_id = replay_errors.replay_run_id

)

select * from superseded
