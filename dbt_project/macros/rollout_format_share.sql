{#
    Share of extension-reporting devices and of readings on each payload format (legacy ticks, new
    mm) per time bucket, from the hourly rollup. `bucket` is the SQL of the bucket over the rollup's
    `hour_start` and `bucket_column` its name: the daily and hourly rollout marts differ only there.
    A device that sent both formats in a bucket counts for both, so device shares of a bucket can
    sum to more than 1; reading shares sum to 1.
#}
{% macro rollout_format_share(bucket, bucket_column) %}

with

hourly as (

    select * from {{ ref('fct_readings_hourly') }}

),

extension_hours as (

    select
        {{ bucket }} as {{ bucket_column }},
        payload_format,
        device_id,
        reading_count

    from hourly
    where measure = 'platform_extension'

),

per_format as (

    select
        {{ bucket_column }},
        payload_format,
        count(distinct device_id) as devices,
        sum(reading_count)::bigint as readings

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
        (per_format.readings::double precision / per_bucket.total_readings) as reading_share

    from per_format
    inner join per_bucket
        on per_format.{{ bucket_column }} = per_bucket.{{ bucket_column }}

)

select * from shares

{% endmacro %}
