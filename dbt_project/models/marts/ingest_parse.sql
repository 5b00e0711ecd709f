-- depends_on: {{ ref('stg_ingest__raw_records') }}, {{ ref('stg_ingest__processed_records') }}
-- depends_on: {{ ref('stg_ingest__raw_duplicates') }}, {{ ref('stg_ingest__device_startups') }}
-- depends_on: {{ ref('stg_ingest__ingest_errors') }}, {{ ref('stg_ingest__record_types') }}
with

outcomes as (

    {%- if is_incremental() %}
    -- The ledger rows received since the newest one held (minus the lookback: received_at is a
    -- transaction's start, which can commit after a later one), and those of reprocess_days,
    -- read from the oldest of their ids on (each outcome table by its raw_record_id index).
    {%- set recent = 'received_at > ' ~ watermark_literal(own_max('received_at'))
        ~ ' or ' ~ timestamp_in_days('received_at', reprocess_days()) %}
    select * from ({{ raw_record_outcomes(first_raw_id(recent)) }}) as recent_outcomes
    where {{ recent }}
    {%- else %}
    select * from {{ ref('int_raw_record_outcomes') }}
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
