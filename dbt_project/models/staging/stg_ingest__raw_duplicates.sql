with

source as (

    select * from {{ source('ingest', 'raw_duplicate') }}

),

renamed as (

    select
        raw_record_id,
        processed_record_id,
        detected_at

    from source

)

select * from renamed
