with

daily as (

    select * from {{ ref('fct_readings_daily') }}

),

device_firsts as (

    select
        device_id,
        min(report_date) filter (where payload_format = 'legacy') as first_legacy_date,
        min(report_date) filter (where payload_format = 'new') as first_new_date

    from daily
    where measure = 'platform_extension'
    group by device_id

),

reporting_span as (

    select
        min(report_date) as first_date,
        max(report_date) as last_date

    from daily
    where measure = 'platform_extension'

),

calendar as (

    select generate_series(first_date, last_date, interval '1 day')::date as report_date
    from reporting_span
    where first_date is not null

),

states as (

    select
        calendar.report_date,
        case
            when
                device_firsts.first_legacy_date <= calendar.report_date
                and device_firsts.first_new_date <= calendar.report_date then 'migrated'
            when device_firsts.first_legacy_date <= calendar.report_date then 'legacy_only'
            when device_firsts.first_new_date <= calendar.report_date then 'new_only'
        end as device_state

    from calendar
    cross join device_firsts

),

counted as (

    select
        report_date,
        count(*) filter (where device_state = 'legacy_only') as legacy_only_devices,
        count(*) filter (where device_state = 'new_only') as new_only_devices,
        count(*) filter (where device_state = 'migrated') as migrated_devices,
        count(device_state) as total_devices

    from states
    group by report_date

)

select * from counted
