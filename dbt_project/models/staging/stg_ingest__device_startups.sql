with

source as (

    select * from {{ source('ingest', 'device_startup') }}

),

renamed as (

    select
        raw_record_id,
        device_id,
        serial,
        firmware,
        started_at,
        upgraded_legacy,
        processed_at

    from source

)

select * from renamed
