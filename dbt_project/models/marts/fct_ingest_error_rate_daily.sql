{{ config(pre_hook="{{ delete_days('report_date', reprocess_days(), error_rebuild_from('report_date')) }}") }}

with

outcomes as (

    select * from {{ ref('ingest_parse') }}
    {%- if is_incremental() %}
    -- Whole days: from the last day held (still filling) on, and reprocess_days (error_rebuild_from).
    where {{ timestamp_in_days('received_at', reprocess_days(), error_rebuild_from('report_date')) }}
    {%- endif %}

),

classified as (

    select
        {{ utc_day('received_at') }} as report_date,
        payload_format,
        outcome,
        reason

    from outcomes

),

format_totals as (

    select
        report_date,
        payload_format,
        count(*) as raw_records,
        count(*) filter (where outcome = 'error') as format_errors

    from classified
    group by report_date, payload_format

),

reason_counts as (

    select
        report_date,
        payload_format,
        reason,
        count(*) as errors

    from classified
    where outcome = 'error'
    group by report_date, payload_format, reason

),

rates as (

    select
        reason_counts.report_date,
        reason_counts.payload_format,
        reason_counts.reason,
        reason_counts.errors,
        format_totals.format_errors,
        format_totals.raw_records,
        (reason_counts.errors::double precision / format_totals.raw_records) as error_rate,
        (format_totals.format_errors::double precision / format_totals.raw_records) as format_error_rate

    from reason_counts
    inner join format_totals
        on
            reason_counts.report_date = format_totals.report_date
            and reason_counts.payload_format = format_totals.payload_format

)

select * from rates
