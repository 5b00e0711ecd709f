{#
    The day-level incremental marts: a run rebuilds whole UTC days, and which days is decided here.

    - The days new data touched (each model says how: the days after its own watermark).
    - Plus `reprocess_days` (a list of 'YYYY-MM-DD', or a comma-separated string): days rebuilt
      whatever the watermark says, e.g. the days a ledger replay touched. Each mart applies them to
      its own day axis (received day for the ledger marts, observed day for the readings marts).

    A rebuilt day is deleted whole first (`delete_days`, a pre-hook) and inserted again (append), so
    a day that lost rows (a replay turning errors into facts) loses them in the mart too.
#}

{% macro reprocess_days() %}
    {%- set days = var('reprocess_days') or [] -%}
    {%- if days is string -%}
        {%- set days = days.split(',') -%}
    {%- endif -%}
    {%- set clean = [] -%}
    {#- Each goes into SQL as to_date('<day>', 'YYYY-MM-DD') (day_sql), which refuses anything else. -#}
    {%- for day in days if day | string | trim -%}
        {%- do clean.append(day | string | trim | replace("'", "")) -%}
    {%- endfor -%}
    {{ return(clean | unique | sort | list) }}
{% endmacro %}


{#
    `moment` (a datetime or ISO text) minus `minutes`, as a constant timestamptz: the arithmetic is
    done on the UTC timestamp (immutable), so PostgreSQL folds it while planning. Written as
    '...'::timestamptz - interval '...', it is not a constant (timestamptz arithmetic is only
    stable): the planner guesses a third of the table for `column > it`, scans instead of using the
    index, and JIT-compiles the query (seconds).
#}
{% macro minus_minutes_literal(moment, minutes) -%}
    ((('{{ moment }}'::timestamptz at time zone 'UTC') - interval '{{ minutes | int }} minutes') at time zone 'UTC')
{%- endmacro %}


{# A timestamptz literal: `newest` (a watermark) minus the lookback, or -infinity. #}
{% macro watermark_literal(newest, lookback_minutes=var('rollup_lookback_minutes')) %}
    {%- if newest is none -%}
        '-infinity'::timestamptz
    {%- else -%}
        {{ minus_minutes_literal(newest, lookback_minutes) }}
    {%- endif -%}
{% endmacro %}


{# max(column) of this model's table (None when empty, at parse time, or on a full build). #}
{% macro own_max(column, aggregate='max') %}
    {%- if not execute or not is_incremental() -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set result = run_query('select ' ~ aggregate ~ '(' ~ column ~ ') from ' ~ this) -%}
    {{ return(result.columns[0].values()[0]) }}
{% endmacro %}


{#
    The UTC days (ISO strings) of `day_sql` over `relation` rows whose `ingested_column` is after
    `since_literal` (a timestamptz SQL literal), plus reprocess_days. Run at execution time.
#}
{% macro changed_days(relation, day_sql, ingested_column, since_literal) %}
    {%- set days = reprocess_days() -%}
    {%- if execute -%}
        {%- set query -%}
            select distinct ({{ day_sql }})::text from {{ relation }} where {{ ingested_column }} > {{ since_literal }}
        {%- endset -%}
        {%- for day in run_query(query).columns[0].values() -%}
            {%- do days.append(day) -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(days | unique | sort | list) }}
{% endmacro %}


{# A day as SQL: an error for anything but YYYY-MM-DD ('yesterday'::date would be accepted). #}
{% macro day_sql(day) -%}
    to_date('{{ day }}', 'YYYY-MM-DD')
{%- endmacro %}


{# `day_expr` (a date) is one of `days`, or on/after `from_day`; false when there is neither. #}
{% macro day_in(day_expr, days, from_day=none) %}
    {%- set parts = [] -%}
    {%- if from_day is not none -%}
        {%- do parts.append(day_expr ~ " >= " ~ day_sql(from_day)) -%}
    {%- endif -%}
    {%- if days -%}
        {%- set listed = [] -%}
        {%- for day in days -%}
            {%- do listed.append(day_sql(day)) -%}
        {%- endfor -%}
        {%- do parts.append(day_expr ~ " in (" ~ (listed | join(', ')) ~ ")") -%}
    {%- endif -%}
    ({{ parts | join(' or ') if parts else 'false' }})
{% endmacro %}


{#
    The start of UTC day `day` (+ `plus_days`) as a constant timestamptz; anything but YYYY-MM-DD
    goes through to_date, which refuses it ('yesterday'::date would be accepted). A constant (date arithmetic and `at time
    zone` on a timestamp are immutable), not to_date(...) at time zone 'UTC' (only stable: the
    planner guessed a third of the table and scanned all of it instead of using the index).
#}
{% macro day_start_literal(day, plus_days=0) -%}
    {%- set text = day | string -%}
    {%- if text | length == 10 and text[4] == '-' and text[7] == '-' and (text[:4] ~ text[5:7] ~ text[8:]).isdigit() -%}
        (('{{ text }}'::date + {{ plus_days | int }})::timestamp at time zone 'UTC')
    {%- else -%}
        {#- Not YYYY-MM-DD: to_date refuses it when the query runs. -#}
        (({{ day_sql(text) }} + {{ plus_days | int }})::timestamp at time zone 'UTC')
    {%- endif -%}
{%- endmacro %}


{#
    The same as day_in over a timestamptz column, written as ranges of constants so that an index on
    the column serves it and the planner sees how few rows it selects (utc_day(column) in (...)
    would scan everything).
#}
{% macro timestamp_in_days(column, days, from_day=none) %}
    {%- set parts = [] -%}
    {%- if from_day is not none -%}
        {%- do parts.append(column ~ " >= " ~ day_start_literal(from_day)) -%}
    {%- endif -%}
    {%- for day in days -%}
        {%- do parts.append(
            "(" ~ column ~ " >= " ~ day_start_literal(day) ~ " and " ~ column ~ " < " ~ day_start_literal(day, 1) ~ ")"
        ) -%}
    {%- endfor -%}
    ({{ parts | join(' or ') if parts else 'false' }})
{% endmacro %}


{# Pre-hook of a day-level incremental mart: delete the days the run rebuilds (nothing on a full build). #}
{% macro delete_days(day_column, days, from_day=none) %}
    {%- if is_incremental() -%}
        delete from {{ this }} where {{ day_in(day_column, days, from_day) }}
    {%- endif -%}
{% endmacro %}


{#
    The error-rate mart (rows only for days with errors): rebuild from the last day it holds (still
    filling) on, or, when it holds none, from the first day with an error (none: nothing to rebuild).
    One lookup on ingest_parse's (outcome, received_at) index. An empty mart must not mean "from
    1970": on a ledger without errors that re-read every outcome each hour.
#}
{% macro error_rebuild_from(day_column) %}
    {%- set newest = own_max(day_column) -%}
    {%- if not execute or not is_incremental() -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set query -%}
        select ({{ utc_day('min(received_at)') }})::text from {{ ref('ingest_parse') }}
        where outcome = 'error'
        {%- if newest is not none %} and received_at >= {{ day_start_literal(newest | string) }}{% endif %}
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{% endmacro %}


{#
    Observed-day marts built from the hourly rollup: the days of rollup rows re-rolled since the
    mart's own newest `last_ingested_at` (minus the rollup's lookback, the same margin the rollup
    re-reads), plus reprocess_days.
#}
{% macro rollup_changed_days() %}
    {%- if not is_incremental() -%}
        {{ return([]) }}
    {%- endif -%}
    {{ return(changed_days(
        ref('fct_readings_hourly'), utc_day('hour_start'), 'last_ingested_at',
        watermark_literal(own_max('last_ingested_at'))
    )) }}
{% endmacro %}


{# The same over the extension readings (observed days of readings ingested since the watermark). #}
{% macro extension_changed_days() %}
    {%- if not is_incremental() -%}
        {{ return([]) }}
    {%- endif -%}
    {{ return(changed_days(
        ref('int_readings_unified_mm'), utc_day('observed_at'), 'ingested_at',
        watermark_literal(own_max('last_ingested_at'))
    )) }}
{% endmacro %}
