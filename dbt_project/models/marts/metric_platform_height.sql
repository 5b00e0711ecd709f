with

daily as (

    select * from {{ ref('fct_readings_daily') }}

),

summary as (

    select
        device_id,
        min(min_value) as min_height_mm,
        max(max_value) as max_height_mm,
        (sum(sum_value) / sum(reading_count))::double precision as avg_height_mm,
        sum(reading_count)::bigint as reading_count

    from daily
    where measure = 'platform_height'
    group by device_id

)

select * from summary
