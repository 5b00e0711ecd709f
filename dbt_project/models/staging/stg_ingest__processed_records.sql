with

source as (

    select * from {{ source('ingest', 'processed_record') }}

),

renamed as (

    select
        id as processed_record_id,
        raw_record_id,
        device_id,
        record_type_id,
        record_time as observed_at,
        value,
        ingested_at

    from source

)

select * from renamed
