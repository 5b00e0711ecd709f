with

source as (

    select * from {{ source('ingest', 'raw_record') }}

),

renamed as (

    select
        id as raw_record_id,
        received_at,
        request_id,
        batch_index,
        content_type,
        content_encoding,
        remote_addr,
        payload as payload_json,
        body_text

    from source

)

select * from renamed
