with

unified as (

    select * from {{ ref('int_readings_unified_mm') }}

),

{{ side_switch_counts('unified') }}

select * from final
