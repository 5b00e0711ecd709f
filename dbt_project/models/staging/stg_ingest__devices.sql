with

source as (

    select * from {{ source('ingest', 'device') }}

),

renamed as (

    select
        id as device_id,
        serial,
        firmware,
        origin,
        provisioned_at,
        first_seen_at,
        last_seen_at

    from source

)

select * from renamed
