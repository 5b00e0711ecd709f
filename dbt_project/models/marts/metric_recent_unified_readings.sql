with

unified as (

    select * from {{ ref('int_readings_unified_mm') }}
    {%- if is_incremental() %}
    -- A reading that belongs in the newest N is no older than the oldest of the N held now.
    {%- set oldest = own_max('observed_at', 'min') %}
    where observed_at >= {{ "'" ~ oldest ~ "'::timestamptz" if oldest is not none else "'-infinity'::timestamptz" }}
    {%- endif %}

),

ranked as (

    select
        row_number() over (order by observed_at desc, processed_record_id desc) as recency_rank,
        device_id,
        observed_at,
        source_type,
        source_value,
        extension_mm,
        processed_record_id

    from unified

),

recent as (

    select * from ranked
    where recency_rank <= {{ var('recent_readings_limit') }}

)

select * from recent
