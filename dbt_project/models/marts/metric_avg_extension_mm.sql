with

daily as (

    select * from {{ ref('fct_readings_daily') }}

),

averaged as (

    select
        device_id,
        (sum(sum_mm) / sum(reading_count))::double precision as avg_extension_mm,
        sum(reading_count)::bigint as reading_count

    from daily
    where measure = 'platform_extension'
    group by device_id

)

select * from averaged
