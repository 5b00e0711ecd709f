with

daily as (

    select * from {{ ref('fct_readings_daily') }}

),

per_device as (

    select
        device_id,
        coalesce(sum(reading_count) filter (where payload_format = 'legacy'), 0)::bigint as legacy_ticks_readings,
        coalesce(sum(reading_count) filter (where payload_format = 'new'), 0)::bigint as new_mm_readings,
        min(first_observed_at) filter (where payload_format = 'legacy') as first_legacy_at,
        max(last_observed_at) filter (where payload_format = 'legacy') as last_legacy_at,
        min(first_observed_at) filter (where payload_format = 'new') as first_new_at,
        max(last_observed_at) filter (where payload_format = 'new') as last_new_at

    from daily
    where measure = 'platform_extension'
    group by device_id

),

both_formats as (

    select * from per_device
    where legacy_ticks_readings > 0 and new_mm_readings > 0

)

select * from both_formats
