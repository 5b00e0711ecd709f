{{ config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ delete_days('report_date', extension_changed_days()) }}",
    indexes=[{'columns': ['device_id', 'report_date'], 'unique': True}, {'columns': ['last_ingested_at']}],
) }}
-- depends_on: {{ ref('fct_readings_hourly') }}

with

readings as (

    select
        device_id,
        observed_at,
        processed_record_id,
        extension_mm,
        ingested_at,
        {{ utc_day('observed_at') }} as report_date

    from {{ ref('int_readings_unified_mm') }}
    -- Only the facts the rollup has counted (its watermark): the key figures sum these days, and
    -- all their figures are as of that watermark. Later facts come in on the next run.
    where
        ingested_at <= {{ rollup_data_as_of() }}
        {%- if is_incremental() %}
        and {{ timestamp_in_days('observed_at', extension_changed_days()) }}
        {%- endif %}

),

ordered as (

    select
        *,
        lag(extension_mm) over (
            partition by device_id, report_date order by observed_at, processed_record_id
        ) as previous_mm

    from readings

),

move_days as (

    select
        device_id,
        report_date,
        count(*) as readings,
        count(*) filter (where extension_mm > previous_mm) as extensions,
        count(*) filter (where extension_mm < previous_mm) as retractions,
        count(*) filter (where extension_mm = previous_mm) as unchanged,
        (array_agg(extension_mm order by observed_at, processed_record_id))[1] as first_mm,
        (array_agg(extension_mm order by observed_at desc, processed_record_id desc))[1] as last_mm,
        max(ingested_at) as last_ingested_at

    from ordered
    group by device_id, report_date

),

sides as (

    select
        device_id,
        report_date,
        observed_at,
        processed_record_id,
        sign(extension_mm) as side,
        lag(sign(extension_mm)) over (
            partition by device_id, report_date order by observed_at, processed_record_id
        ) as previous_side

    from readings
    where extension_mm <> 0

),

side_days as (

    select
        device_id,
        report_date,
        count(*) filter (where previous_side = -1 and side = 1) as left_to_right,
        count(*) filter (where previous_side = 1 and side = -1) as right_to_left,
        (array_agg(side order by observed_at, processed_record_id))[1] as first_side,
        (array_agg(side order by observed_at desc, processed_record_id desc))[1] as last_side

    from sides
    group by device_id, report_date

),

final as (

    select
        move_days.device_id,
        move_days.report_date,
        move_days.readings,
        move_days.extensions,
        move_days.retractions,
        move_days.unchanged,
        move_days.first_mm,
        move_days.last_mm,
        coalesce(side_days.left_to_right, 0) as left_to_right,
        coalesce(side_days.right_to_left, 0) as right_to_left,
        side_days.first_side,
        side_days.last_side,
        move_days.last_ingested_at

    from move_days
    left join side_days
        on
            move_days.device_id = side_days.device_id
            and move_days.report_date = side_days.report_date

)

select * from final
