with

unified as (

    select * from {{ ref('int_readings_unified_mm') }}

),

window_readings as (

    select * from unified
    where observed_at >= {{ metrics_as_of() }} - interval '1 hour'

),

devices as (

    select distinct device_id from window_readings

),

sides as (

    select
        device_id,
        sign(extension_mm) as side,
        lag(sign(extension_mm)) over (
            partition by device_id order by observed_at, processed_record_id
        ) as previous_side

    from window_readings
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
        coalesce(switches.left_to_right + switches.right_to_left, 0) as total_side_switches,
        ({{ metrics_as_of() }} - interval '1 hour')::timestamptz as window_start

    from devices
    left join switches
        on devices.device_id = switches.device_id

)

select * from final
