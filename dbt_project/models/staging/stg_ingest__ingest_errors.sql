-- Current errors only: an error a replay superseded (ingest.outcome_supersession) is history, in
-- int_superseded_outcomes. The rule of "current" is the view's (migration 0007).
with

source as (

    select * from {{ source('ingest', 'current_ingest_error') }}

),

renamed as (

    select
        raw_record_id,
        reason,
        detail,
        event_type,
        device_id,
        first_seen_at as errored_at,
        last_seen_at,
        replay_run_id

    from source

)

select * from renamed
