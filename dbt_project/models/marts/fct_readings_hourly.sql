with

readings as not materialized (

    select * from {{ ref('int_readings_converted') }}

),

{% if is_incremental() %}

changed_hours as (

    select distinct
        device_id,
        record_type_id,
        {{ utc_hour('observed_at') }} as hour_start

    from readings
    where
        ingested_at > {{ rollup_watermark() }}
        {%- if var('rollup_until') %}
        and ingested_at <= '{{ var('rollup_until') }}'::timestamptz
        {%- endif %}
        {%- if reprocess_days() %}
        or {{ timestamp_in_days('observed_at', reprocess_days()) }}
        {%- endif %}

),

readings_to_roll_up as (

    select hour_readings.*

    from changed_hours
    cross join lateral (
        -- Correlated on changed_hours: the inner columns are qualified so none reads the outer row.
        select * from readings
        where
            readings.device_id = changed_hours.device_id  -- noqa: RF03
            and readings.record_type_id = changed_hours.record_type_id
            and readings.observed_at >= changed_hours.hour_start
            and readings.observed_at < changed_hours.hour_start + interval '1 hour'
        -- `offset 0` keeps PostgreSQL from flattening the subquery: one index range scan per hour.
        offset 0  -- noqa: AM09
    ) as hour_readings

),

{% else %}

readings_to_roll_up as (

    select * from readings

),

{% endif %}

rolled_up as (

    select
        {{ utc_hour('observed_at') }} as hour_start,
        device_id,
        record_type_id,
        record_type_name,
        payload_format,
        measure,
        unit,
        count(*) as reading_count,
        min(value) as min_value,
        max(value) as max_value,
        avg(value) as avg_value,
        sum(value) as sum_value,
        min(value_mm) as min_mm,
        max(value_mm) as max_mm,
        avg(value_mm) as avg_mm,
        sum(value_mm) as sum_mm,
        min(observed_at) as first_observed_at,
        max(observed_at) as last_observed_at,
        max(ingested_at) as last_ingested_at

    from readings_to_roll_up
    group by 1, 2, 3, 4, 5, 6, 7

)

select * from rolled_up
