{{ rollout_format_share('hour_start', 'hour_start', utc_day('hour_start')) }}
