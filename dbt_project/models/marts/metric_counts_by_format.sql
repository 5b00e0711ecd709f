with

daily as (

    select * from {{ ref('fct_readings_daily') }}

),

counted as (

    select
        record_type_name as source_type,
        payload_format as source_format,
        sum(reading_count)::bigint as reading_count,
        count(distinct device_id) as device_count

    from daily
    where measure = 'platform_extension'
    group by 1, 2

)

select * from counted
