{{ config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ delete_days('report_date', rollup_changed_days()) }}",
    indexes=[
        {'columns': ['device_id', 'record_type_id', 'report_date'], 'unique': True},
        {'columns': ['last_ingested_at']},
    ],
) }}

-- The hourly rollup summed per device, record type and UTC day: what the per-device metrics and
-- the daily device states read, a 24th of the rollup's rows (a day-level grain does not grow with
-- how many hours of a day a device reports). Incremental by day, as the daily rollout marts.
-- Sums and counts, so every mean computed from it is exact (not a mean of means).

with

hourly as (

    select * from {{ ref('fct_readings_hourly') }}
    {%- if is_incremental() %}
    where {{ timestamp_in_days('hour_start', rollup_changed_days()) }}
    {%- endif %}

),

daily as (

    select
        {{ utc_day('hour_start') }} as report_date,
        device_id,
        record_type_id,
        record_type_name,
        payload_format,
        measure,
        unit,
        sum(reading_count)::bigint as reading_count,
        (sum(sum_value) / sum(reading_count))::double precision as avg_value,
        min(min_value) as min_value,
        max(max_value) as max_value,
        sum(sum_value) as sum_value,
        min(min_mm) as min_mm,
        max(max_mm) as max_mm,
        sum(sum_mm) as sum_mm,
        (sum(sum_mm) / sum(reading_count))::double precision as avg_mm,
        min(first_observed_at) as first_observed_at,
        max(last_observed_at) as last_observed_at,
        max(last_ingested_at) as last_ingested_at

    from hourly
    group by 1, 2, 3, 4, 5, 6, 7

)

select * from daily
