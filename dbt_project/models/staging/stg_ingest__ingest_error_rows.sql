-- Every ingest_error row live ingest wrote, superseded or not (stg_ingest__ingest_errors has the
-- current ones): the details of superseded errors for int_superseded_outcomes.
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
        first_seen_at as errored_at

    from source

)

select * from renamed
