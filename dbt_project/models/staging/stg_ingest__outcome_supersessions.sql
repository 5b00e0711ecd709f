with

source as (

    select * from {{ source('ingest', 'outcome_supersession') }}

),

renamed as (

    select
        raw_record_id,
        replay_run_id,
        superseded_replay_run_id,
        superseded_reason,
        outcome as superseded_by_outcome,
        superseded_at

    from source

)

select * from renamed
