{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key='device_id', on_schema_change='fail'
) }}
-- depends_on: {{ ref('int_extension_moves_daily') }}

{%- if is_incremental() %}

-- An incremental run: the per-day counts plus the moves across day boundaries (the day's first
-- reading against the previous day's last), from the per-device-day table instead of every
-- reading. tests/dbt/test_incremental.py proves it equals the full build below.

with

days as (

    select * from {{ ref('int_extension_moves_daily') }}

),

boundaries as (

    select
        device_id,
        first_mm,
        lag(last_mm) over (partition by device_id order by report_date) as previous_mm

    from days

),

within_days as (

    select
        device_id,
        sum(extensions) as extensions,
        sum(retractions) as retractions,
        sum(unchanged) as unchanged

    from days
    group by device_id

),

across_days as (

    select
        device_id,
        count(*) filter (where first_mm > previous_mm) as extensions,
        count(*) filter (where first_mm < previous_mm) as retractions,
        count(*) filter (where first_mm = previous_mm) as unchanged

    from boundaries
    group by device_id

),

counted as (

    select
        within_days.device_id,
        (within_days.extensions + across_days.extensions)::bigint as extensions,
        (within_days.retractions + across_days.retractions)::bigint as retractions,
        (within_days.unchanged + across_days.unchanged)::bigint as unchanged

    from within_days
    inner join across_days
        on within_days.device_id = across_days.device_id

)

{%- else %}

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

{%- endif %}

select * from counted
