with

daily as (

    select * from {{ ref('fct_readings_daily') }}

),

averaged as (

    select
        device_id,
        (
            sum(sum_mm) filter (where payload_format = 'new')
            / nullif(sum(reading_count) filter (where payload_format = 'new'), 0))::double precision
            as avg_new_only_mm,
        (
            sum(sum_mm) filter (where payload_format = 'legacy')
            / nullif(sum(reading_count) filter (where payload_format = 'legacy'), 0))::double precision
            as avg_legacy_only_mm,
        (sum(sum_mm) / sum(reading_count))::double precision as avg_all_mm,
        coalesce(sum(reading_count) filter (where payload_format = 'new'), 0)::bigint as new_readings,
        coalesce(sum(reading_count) filter (where payload_format = 'legacy'), 0)::bigint as legacy_readings

    from daily
    where measure = 'platform_extension'
    group by device_id

)

select * from averaged
