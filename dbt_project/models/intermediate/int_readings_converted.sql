with

readings as (

    select * from {{ ref('stg_ingest__processed_records') }}

),

record_types as (

    select * from {{ ref('stg_ingest__record_types') }}

),

calibrations as (

    select * from {{ ref('device_calibration') }}

),

typed as (

    select
        readings.processed_record_id,
        readings.raw_record_id,
        readings.device_id,
        readings.record_type_id,
        record_types.record_type_name,
        record_types.payload_format,
        record_types.measure,
        record_types.unit,
        readings.observed_at,
        readings.ingested_at,
        readings.value

    from readings
    inner join record_types
        on readings.record_type_id = record_types.record_type_id

),

calibrated as (

    select
        typed.*,
        calibrations.ticks_per_mm as calibrated_ticks_per_mm,
        calibrations.zero_offset_ticks as calibrated_zero_offset_ticks

    from typed
    left join calibrations
        on
            typed.unit = 'ticks'
            and typed.device_id = calibrations.device_id
            and typed.observed_at >= calibrations.valid_from
            and (calibrations.valid_to is null or typed.observed_at < calibrations.valid_to)

),

converted as (

    select
        processed_record_id,
        raw_record_id,
        device_id,
        record_type_id,
        record_type_name,
        payload_format,
        measure,
        unit,
        observed_at,
        ingested_at,
        value,
        calibrated_ticks_per_mm is not null as is_calibrated,
        case
            when unit = 'ticks'
                then coalesce(calibrated_ticks_per_mm, {{ var('default_ticks_per_mm') }}::double precision)
        end as ticks_per_mm,
        case
            when unit = 'ticks' then coalesce(calibrated_zero_offset_ticks, 0::double precision)
        end as zero_offset_ticks,
        case
            when measure = 'platform_extension' and unit = 'mm' then value
            when measure = 'platform_extension' and unit = 'ticks'
                then
                    (value - coalesce(calibrated_zero_offset_ticks, 0::double precision))
                    / coalesce(calibrated_ticks_per_mm, {{ var('default_ticks_per_mm') }}::double precision)
        end as value_mm

    from calibrated

)

select * from converted
