with

unified as (

    select * from {{ ref('int_readings_unified_mm') }}

),

ranked as (

    select
        row_number() over (order by observed_at desc, processed_record_id desc) as recency_rank,
        device_id,
        observed_at,
        source_type,
        source_value,
        extension_mm,
        processed_record_id

    from unified

),

recent as (

    select * from ranked
    where recency_rank <= {{ var('recent_readings_limit') }}

)

select * from recent
