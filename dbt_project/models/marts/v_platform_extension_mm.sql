with

unified as (

    select * from {{ ref('int_readings_unified_mm') }}

),

published as (

    select
        device_id,
        observed_at,
        source_type,
        source_format,
        source_value,
        extension_mm,
        is_calibrated,
        processed_record_id,
        ingested_at

    from unified

)

select * from published
