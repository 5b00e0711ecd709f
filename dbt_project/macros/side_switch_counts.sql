{#
    The CTEs `devices`, `sides`, `switches` and `final` that count left<->right sign switches per
    device over the readings CTE named `readings` (zero readings ignored; each device's first
    non-zero reading has no previous side). Shared by the all-time and the last-hour metrics and the
    key figures; `prefix` names the CTEs apart when one model counts over two reading sets.
#}
{% macro side_switch_counts(readings, extra_columns='', prefix='') %}

{{ prefix }}devices as (

    select distinct device_id from {{ readings }}

),

{{ prefix }}sides as (

    select
        device_id,
        sign(extension_mm) as side,
        lag(sign(extension_mm)) over (
            partition by device_id order by observed_at, processed_record_id
        ) as previous_side

    from {{ readings }}
    where extension_mm <> 0

),

{{ prefix }}switches as (

    select
        device_id,
        count(*) filter (where previous_side = -1 and side = 1) as left_to_right,
        count(*) filter (where previous_side = 1 and side = -1) as right_to_left

    from {{ prefix }}sides
    group by device_id

),

{{ prefix }}final as (

    select
        {{ prefix }}devices.device_id,
        coalesce({{ prefix }}switches.left_to_right, 0) as left_to_right,
        coalesce({{ prefix }}switches.right_to_left, 0) as right_to_left,
        coalesce({{ prefix }}switches.left_to_right + {{ prefix }}switches.right_to_left, 0) as total_side_switches
        {{- extra_columns }}

    from {{ prefix }}devices
    left join {{ prefix }}switches
        on {{ prefix }}devices.device_id = {{ prefix }}switches.device_id

)

{% endmacro %}
