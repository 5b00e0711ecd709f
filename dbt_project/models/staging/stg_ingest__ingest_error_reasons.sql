with

source as (

    select * from {{ source('ingest', 'ingest_error_reason') }}

),

renamed as (

    select
        reason,
        description as reason_description

    from source

)

select * from renamed
