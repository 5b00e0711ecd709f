with

source as (

    select * from {{ source('ingest', 'record_type') }}

),

renamed as (

    select
        id as record_type_id,
        name as record_type_name,
        unit,
        min_value,
        max_value,
        payload_format,
        measure,
        description as record_type_description

    from source

)

select * from renamed
