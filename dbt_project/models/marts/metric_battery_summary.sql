with

daily as (

    select * from {{ ref('fct_readings_daily') }}

),

summary as (

    select
        device_id,
        min(min_value) as min_pct,
        max(max_value) as max_pct,
        (sum(sum_value) / sum(reading_count))::double precision as avg_pct,
        sum(reading_count)::bigint as reading_count,
        max(last_observed_at) as last_seen_at

    from daily
    where measure = 'battery_charge'
    group by device_id

)

select * from summary
