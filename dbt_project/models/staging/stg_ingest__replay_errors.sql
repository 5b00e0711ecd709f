with

source as (

    select * from {{ source('ingest', 'replay_error') }}

),

renamed as (

    select
        raw_record_id,
        replay_run_id,
        reason,
        detail,
        event_type,
        device_id,
        first_seen_at as errored_at

    from source

)

select * from renamed
