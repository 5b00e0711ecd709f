with

converted as (

    select * from {{ ref('int_readings_converted') }}

),

extension_readings as (

    select
        processed_record_id,
        raw_record_id,
        device_id,
        record_type_id,
        record_type_name as source_type,
        payload_format as source_format,
        unit as source_unit,
        observed_at,
        ingested_at,
        value as source_value,
        is_calibrated,
        ticks_per_mm,
        zero_offset_ticks,
        value_mm as extension_mm

    from converted
    where measure = 'platform_extension'

)

select * from extension_readings
