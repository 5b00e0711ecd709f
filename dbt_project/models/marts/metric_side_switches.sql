{{ config(
    materialized='incremental', incremental_strategy='delete+insert', unique_key='device_id', on_schema_change='fail'
) }}
-- depends_on: {{ ref('int_extension_moves_daily') }}

{%- if is_incremental() %}

-- An incremental run: the all-time counts from the per-day ones, plus the switches across day
-- boundaries (the previous day's last non-zero side against the day's first), read from the small
-- per-device-day table instead of every reading. tests/dbt/test_incremental.py proves it equals the
-- full build below.

with

days as (

    select * from {{ ref('int_extension_moves_daily') }}

),

side_days as (

    select
        device_id,
        first_side,
        lag(last_side) over (partition by device_id order by report_date) as previous_side

    from days
    where first_side is not null

),

within_days as (

    select
        device_id,
        sum(left_to_right) as left_to_right,
        sum(right_to_left) as right_to_left

    from days
    group by device_id

),

across_days as (

    select
        device_id,
        count(*) filter (where previous_side = -1 and first_side = 1) as left_to_right,
        count(*) filter (where previous_side = 1 and first_side = -1) as right_to_left

    from side_days
    group by device_id

),

counted as (

    select
        within_days.device_id,
        (within_days.left_to_right + coalesce(across_days.left_to_right, 0))::bigint as left_to_right,
        (within_days.right_to_left + coalesce(across_days.right_to_left, 0))::bigint as right_to_left

    from within_days
    left join across_days
        on within_days.device_id = across_days.device_id

),

final as (

    select
        device_id,
        left_to_right,
        right_to_left,
        left_to_right + right_to_left as total_side_switches

    from counted

)

{%- else %}

with

unified as (

    select * from {{ ref('int_readings_unified_mm') }}

),

{{ side_switch_counts('unified') }}

{%- endif %}

select * from final
