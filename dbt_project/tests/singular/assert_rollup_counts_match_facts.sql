-- The hourly rollup must account for every fact exactly once: per device, record type and UTC
-- hour, its reading_count equals the facts in ingest.processed_record. A row here is an hour the
-- incremental rollup missed (e.g. late data outside the lookback) or double-counted.
-- Only facts ingested up to the rollup's newest ingested_at count: the API keeps writing while
-- dbt runs, and a fact that arrived after the rollup was built is the next run's work, not a miss.
{{ config(meta={'dagster': {'ref': {'name': 'fct_readings_hourly'}}}) }}

with

rollup_watermark as (

    select max(last_ingested_at) as ingested_until
    from {{ ref('fct_readings_hourly') }}

),

{%- if test_since() %}

-- The hourly run: the groups with facts ingested in the window, or re-rolled in it, counted whole.
checked_groups as (

    select distinct
        device_id,
        record_type_id,
        {{ utc_hour('record_time') }} as hour_start
    from {{ source('ingest', 'processed_record') }}
    where
        {{ in_test_window('ingested_at') }}
        and ingested_at <= (select rollup_watermark.ingested_until from rollup_watermark)
    union
    select
        device_id,
        record_type_id,
        hour_start
    from {{ ref('fct_readings_hourly') }}
    where {{ in_test_window('last_ingested_at') }}

),

fact_counts as (

    select
        checked_groups.device_id,
        checked_groups.record_type_id,
        checked_groups.hour_start,
        group_facts.facts
    from checked_groups
    cross join
        lateral (
            select count(*) as facts
            from {{ source('ingest', 'processed_record') }} as facts
            where
                facts.device_id = checked_groups.device_id  -- noqa: RF03
                and facts.record_type_id = checked_groups.record_type_id
                and facts.record_time >= checked_groups.hour_start
                and facts.record_time < checked_groups.hour_start + interval '1 hour'
                and facts.ingested_at <= (select rollup_watermark.ingested_until from rollup_watermark)
        ) as group_facts
    where group_facts.facts > 0

),

rollup_counts as (

    -- One probe of the rollup's unique index per group, as fact_counts does for the facts: a join
    -- the planner may hash would read the whole rollup for the window's few groups.
    select
        checked_groups.device_id,
        checked_groups.record_type_id,
        checked_groups.hour_start,
        group_rollup.reading_count
    from checked_groups
    cross join
        lateral (
            select hourly.reading_count
            from {{ ref('fct_readings_hourly') }} as hourly
            where
                hourly.device_id = checked_groups.device_id  -- noqa: RF03
                and hourly.record_type_id = checked_groups.record_type_id
                and hourly.hour_start = checked_groups.hour_start
            -- `offset 0` keeps PostgreSQL from flattening the probe into a join.
            offset 0  -- noqa: AM09
        ) as group_rollup

)

{%- else %}

fact_counts as (

    select
        device_id,
        record_type_id,
        {{ utc_hour('record_time') }} as hour_start,
        count(*) as facts
    from {{ source('ingest', 'processed_record') }}
    where ingested_at <= (select rollup_watermark.ingested_until from rollup_watermark)
    group by 1, 2, 3

),

rollup_counts as (

    select
        device_id,
        record_type_id,
        hour_start,
        reading_count
    from {{ ref('fct_readings_hourly') }}

)

{%- endif %}

select
    coalesce(fact_counts.device_id, rollup_counts.device_id) as device_id,
    coalesce(fact_counts.record_type_id, rollup_counts.record_type_id) as record_type_id,
    coalesce(fact_counts.hour_start, rollup_counts.hour_start) as hour_start,
    fact_counts.facts,
    rollup_counts.reading_count
from fact_counts
full outer join rollup_counts
    on
        fact_counts.device_id = rollup_counts.device_id
        and fact_counts.record_type_id = rollup_counts.record_type_id
        and fact_counts.hour_start = rollup_counts.hour_start
where fact_counts.facts is distinct from rollup_counts.reading_count
