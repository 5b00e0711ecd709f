with

source as (

    select * from {{ source('ingest', 'ingest_error') }}

),

renamed as (

    select
        raw_record_id,
        reason,
        detail,
        event_type,
        device_id,
        first_seen_at as errored_at,
        last_seen_at

    from source

)

select * from renamed
