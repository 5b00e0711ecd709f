-- Invariant 3: without a calibration, a legacy reading is exactly ticks / 20 mm and a new one is
-- its mm value, and every extension fact appears in v_platform_extension_mm once. A row here is
-- a reading converted wrongly, missing from the view, or invented by it. 20 is written out on
-- purpose (it is the product's default, not the project var that the view uses). With test_since
-- (the hourly run), the facts ingested in the window.
{{ config(meta={'dagster': {'ref': {'name': 'v_platform_extension_mm'}}}) }}

with

facts as (

    select
        facts.id as processed_record_id,
        record_types.unit,
        facts.value
    from {{ source('ingest', 'processed_record') }} as facts
    inner join {{ source('ingest', 'record_type') }} as record_types
        on facts.record_type_id = record_types.id
    where
        record_types.measure = 'platform_extension'
        and {{ in_test_window('facts.ingested_at') }}
        and facts.device_id not in (select calibrated.device_id from {{ ref('device_calibration') }} as calibrated)

),

unified as (

    select
        processed_record_id,
        extension_mm
    from {{ ref('v_platform_extension_mm') }}
    where
        {{ in_test_window('ingested_at') }}
        and device_id not in (select calibrated.device_id from {{ ref('device_calibration') }} as calibrated)

)

select
    coalesce(facts.processed_record_id, unified.processed_record_id) as processed_record_id,
    facts.unit,
    facts.value,
    unified.extension_mm
from facts
full outer join unified
    on facts.processed_record_id = unified.processed_record_id
where
    facts.processed_record_id is null
    or unified.processed_record_id is null
    or unified.extension_mm is distinct from (
        case facts.unit when 'ticks' then facts.value / 20.0::double precision else facts.value end
    )
