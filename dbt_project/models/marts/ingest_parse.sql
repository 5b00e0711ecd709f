with

outcomes as (

    select * from {{ ref('int_raw_record_outcomes') }}

),

parsed as (

    select
        raw_record_id,
        received_at,
        request_id,
        batch_index,
        outcome,
        coalesce(outcome in ('processed', 'duplicate', 'provisioned'), false) as parse_ok,
        device_id,
        processed_record_id,
        record_type_id,
        event_type,
        payload_format,
        reason,
        detail

    from outcomes

)

select * from parsed
