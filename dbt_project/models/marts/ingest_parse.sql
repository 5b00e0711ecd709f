with

outcomes as (

    select * from {{ ref('int_raw_record_outcomes') }}
    {%- if is_incremental() %}
    -- The ledger rows received since the newest one held (minus the lookback: received_at is a
    -- transaction's start, which can commit after a later one), and those of reprocess_days.
    where
        received_at > {{ watermark_literal(own_max('received_at')) }}
        or {{ timestamp_in_days('received_at', reprocess_days()) }}
    {%- endif %}

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
