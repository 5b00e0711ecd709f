{#
    The CTEs `devices`, `sides`, `switches` and `final` that count left<->right sign switches per
    device over the readings CTE named `readings` (zero readings ignored; each device's first
    non-zero reading has no previous side). Shared by the all-time and the last-hour metric.
#}
{% macro side_switch_counts(readings, extra_columns='') %}

devices as (

    select distinct device_id from {{ readings }}

),

sides as (

    select
        device_id,
        sign(extension_mm) as side,
        lag(sign(extension_mm)) over (
            partition by device_id order by observed_at, processed_record_id
        ) as previous_side

    from {{ readings }}
    where extension_mm <> 0

),

switches as (

    select
        device_id,
        count(*) filter (where previous_side = -1 and side = 1) as left_to_right,
        count(*) filter (where previous_side = 1 and side = -1) as right_to_left

    from sides
    group by device_id

),

final as (

    select
        devices.device_id,
        coalesce(switches.left_to_right, 0) as left_to_right,
        coalesce(switches.right_to_left, 0) as right_to_left,
        coalesce(switches.left_to_right + switches.right_to_left, 0) as total_side_switches
        {{- extra_columns }}

    from devices
    left join switches
        on devices.device_id = switches.device_id

)

{% endmacro %}
