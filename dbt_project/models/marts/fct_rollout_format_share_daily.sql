with

hourly as (

    select * from {{ ref('fct_readings_hourly') }}

),

extension_hours as (

    select
        {{ utc_day('hour_start') }} as report_date,
        payload_format,
        device_id,
        reading_count

    from hourly
    where measure = 'platform_extension'

),

per_format as (

    select
        report_date,
        payload_format,
        count(distinct device_id) as devices,
        sum(reading_count)::bigint as readings

    from extension_hours
    group by report_date, payload_format

),

per_day as (

    select
        report_date,
        count(distinct device_id) as total_devices,
        sum(reading_count)::bigint as total_readings

    from extension_hours
    group by report_date

),

shares as (

    select
        per_format.report_date,
        per_format.payload_format,
        per_format.devices,
        per_format.readings,
        per_day.total_devices,
        per_day.total_readings,
        (per_format.devices::double precision / per_day.total_devices) as device_share,
        (per_format.readings::double precision / per_day.total_readings) as reading_share

    from per_format
    inner join per_day
        on per_format.report_date = per_day.report_date

)

select * from shares
