with

hourly as (

    select * from {{ ref('fct_readings_hourly') }}

),

format_shares as (

    select * from {{ ref('fct_rollout_format_share_daily') }}

),

device_states as (

    select * from {{ ref('fct_rollout_device_state_daily') }}

),

outcomes as (

    select * from {{ ref('ingest_parse') }}

),

unified as (

    select * from {{ ref('int_readings_unified_mm') }}

),


watermark as (

    select
        max(last_ingested_at) as data_as_of,
        {{ utc_day('max(last_ingested_at)') }} as report_date

    from hourly

),

shares as (

    select
        coalesce(max(format_shares.device_share) filter (where format_shares.payload_format = 'new'), 0)
            as new_format_device_share,
        coalesce(max(format_shares.reading_share) filter (where format_shares.payload_format = 'new'), 0)
            as new_format_reading_share,
        coalesce(max(format_shares.total_devices), 0) as extension_devices,
        coalesce(max(format_shares.total_readings), 0) as extension_readings

    from watermark
    left join format_shares
        on watermark.report_date = format_shares.report_date

),

states as (

    select
        coalesce(max(device_states.legacy_only_devices), 0) as legacy_only_devices,
        coalesce(max(device_states.new_only_devices), 0) as new_only_devices,
        coalesce(max(device_states.migrated_devices), 0) as migrated_devices

    from watermark
    left join device_states
        on watermark.report_date = device_states.report_date

),

day_outcomes as (

    select
        outcomes.payload_format,
        outcomes.outcome = 'error' as is_error

    from outcomes
    inner join watermark
        -- The watermark's UTC day, as a range (ingest_parse's received_at index serves it).
        on
            outcomes.received_at >= (watermark.report_date::timestamp at time zone 'UTC')
            and outcomes.received_at <= watermark.data_as_of

),

error_rates as (

    select
        coalesce(avg(is_error::int), 0)::double precision as ingest_error_rate,
        coalesce(avg(is_error::int) filter (where payload_format = 'legacy'), 0)::double precision
            as ingest_error_rate_legacy,
        coalesce(avg(is_error::int) filter (where payload_format = 'new'), 0)::double precision
            as ingest_error_rate_new,
        coalesce(avg(is_error::int) filter (where payload_format = 'common'), 0)::double precision
            as ingest_error_rate_common

    from day_outcomes

),

{#-
    All-time side switches, over the readings ingested by the rollup's watermark. When
    int_extension_moves_daily holds them all (it is built in the same run: the hourly job), from
    that small per-device-day table; when it lags the rollup (this model built alone), over every
    reading, as before: a figure from a stale table would not be on the watermark.
-#}
{%- set data_as_of = rollup_data_as_of() %}
{%- set days_current = extension_days_current(data_as_of) %}
{%- if days_current %}

-- Per device and observed day, capped at the rollup's watermark as well (see the model).
extension_days as (

    select * from {{ ref('int_extension_moves_daily') }}

),

-- The per-day counts plus the switches across day boundaries (a day's first non-zero side against
-- the device's previous day's last), as metric_side_switches' incremental path sums them.
day_boundaries as (

    select
        first_side,
        lag(last_side) over (partition by device_id order by report_date) as previous_side

    from extension_days
    where first_side is not null

),

all_time as (

    select
        (select coalesce(sum(left_to_right + right_to_left), 0) from extension_days)
        + (
            select count(*) from day_boundaries
            where
                (previous_side = -1 and first_side = 1)
                or (previous_side = 1 and first_side = -1)
        ) as total_side_switches

),
{%- else %}

readings as (

    select *
    from unified
    where ingested_at <= {{ data_as_of }}

),

{{ side_switch_counts('readings', prefix='all_time_') }},

all_time as (

    select coalesce(sum(total_side_switches), 0) as total_side_switches
    from all_time_final

),
{%- endif %}

-- The watermark as a literal (the same value): the planner prunes the facts' partitions to the
-- last hour's and uses their indexes, where a join with the watermark CTE read every reading.
last_hour_readings as (

    select *

    from unified
    where
        observed_at >= {{ data_as_of }} - interval '1 hour'
        and ingested_at <= {{ data_as_of }}

),

{{ side_switch_counts('last_hour_readings', prefix='last_hour_') }},

side_switches as (

    select
        (select total_side_switches from all_time)::bigint as side_switches_total,
        (select coalesce(sum(total_side_switches), 0) from last_hour_final)::bigint as side_switches_last_hour

),

key_figures as (

    select
        watermark.data_as_of,
        watermark.report_date,
        shares.new_format_device_share,
        shares.new_format_reading_share,
        shares.extension_devices,
        shares.extension_readings,
        states.legacy_only_devices,
        states.new_only_devices,
        states.migrated_devices,
        error_rates.ingest_error_rate,
        error_rates.ingest_error_rate_legacy,
        error_rates.ingest_error_rate_new,
        error_rates.ingest_error_rate_common,
        side_switches.side_switches_total,
        side_switches.side_switches_last_hour

    from watermark
    cross join shares
    cross join states
    cross join error_rates
    cross join side_switches

)

select * from key_figures
