with

unified as (

    select * from {{ ref('int_readings_unified_mm') }}

),

window_readings as (

    select * from unified
    where observed_at >= {{ metrics_as_of() }} - interval '1 hour'

),

{{ side_switch_counts(
    'window_readings',
    extra_columns=",\n        (" ~ metrics_as_of() ~ " - interval '1 hour')::timestamptz as window_start"
) }}

select * from final
