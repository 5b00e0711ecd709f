with

unified as (

    select * from {{ ref('int_readings_unified_mm') }}

),

series as (

    select
        device_id,
        extension_mm,
        lag(extension_mm) over (
            partition by device_id order by observed_at, processed_record_id
        ) as previous_mm

    from unified

),

counted as (

    select
        device_id,
        count(*) filter (where extension_mm > previous_mm) as extensions,
        count(*) filter (where extension_mm < previous_mm) as retractions,
        count(*) filter (where extension_mm = previous_mm) as unchanged

    from series
    group by device_id

)

select * from counted
