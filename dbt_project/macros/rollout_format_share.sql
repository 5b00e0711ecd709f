{#
    Share of extension-reporting devices and of readings on each payload format (legacy ticks, new
    mm) per time bucket, from the hourly rollup. `bucket` is the SQL of the bucket over the rollup's
    `hour_start` and `bucket_column` its name: the daily and hourly rollout marts differ only there.
    A device that sent both formats in a bucket counts for both, so device shares of a bucket can
    sum to more than 1; reading shares sum to 1.
    Incremental by UTC day (`day_of_bucket`: the bucket's day): a run rebuilds the days of the rollup
    rows re-rolled since the mart's newest last_ingested_at, and reprocess_days (incremental_days.sql).
#}
{% macro rollout_format_share(bucket, bucket_column, day_of_bucket) %}

{{ config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ delete_days(\"" ~ day_of_bucket ~ "\", rollup_changed_days()) }}",
    indexes=[{'columns': [bucket_column]}, {'columns': ['last_ingested_at']}],
) }}

with

hourly as (

    select * from {{ ref('fct_readings_hourly') }}
    {%- if is_incremental() %}
    where {{ timestamp_in_days('hour_start', rollup_changed_days()) }}
    {%- endif %}

),

extension_hours as (

    select
        {{ bucket }} as {{ bucket_column }},
        payload_format,
        device_id,
        reading_count,
        last_ingested_at

    from hourly
    where measure = 'platform_extension'

),

per_format as (

    select
        {{ bucket_column }},
        payload_format,
        count(distinct device_id) as devices,
        sum(reading_count)::bigint as readings,
        max(last_ingested_at) as last_ingested_at

    from extension_hours
    group by {{ bucket_column }}, payload_format

),

per_bucket as (

    select
        {{ bucket_column }},
        count(distinct device_id) as total_devices,
        sum(reading_count)::bigint as total_readings

    from extension_hours
    group by {{ bucket_column }}

),

shares as (

    select
        per_format.{{ bucket_column }},
        per_format.payload_format,
        per_format.devices,
        per_format.readings,
        per_bucket.total_devices,
        per_bucket.total_readings,
        (per_format.devices::double precision / per_bucket.total_devices) as device_share,
        (per_format.readings::double precision / per_bucket.total_readings) as reading_share,
        per_format.last_ingested_at

    from per_format
    inner join per_bucket
        on per_format.{{ bucket_column }} = per_bucket.{{ bucket_column }}

)

select * from shares

{% endmacro %}
