{{ rollout_format_share(utc_day('hour_start'), 'report_date', 'report_date') }}
