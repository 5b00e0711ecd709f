{#
    The `ingested_at` after which facts are re-rolled by an incremental run of the hourly rollup,
    rendered as a literal: a literal (unlike a subquery) lets PostgreSQL estimate the few new
    rows and use ix_processed_ingested_at, so the run costs what the new data costs.
#}
{% macro rollup_watermark() %}
    {%- if var('rollup_since') -%}
        '{{ var('rollup_since') }}'::timestamptz
    {%- elif execute -%}
        {%- set result = run_query('select max(last_ingested_at) from ' ~ this) -%}
        {%- set newest = result.columns[0].values()[0] -%}
        {%- if newest is none -%}
            '-infinity'::timestamptz
        {%- else -%}
            {{ minus_minutes_literal(newest, var('rollup_lookback_minutes')) }}
        {%- endif -%}
    {%- else -%}
        '-infinity'::timestamptz
    {%- endif -%}
{% endmacro %}


{#
    The rollup's newest `ingested_at` (fct_readings_hourly's, already built in this run), as a
    timestamptz literal read at execution time: the models that must count the same facts as the
    rollup (int_extension_moves_daily, and through it the key figures' all-time side switches) read
    only the facts ingested by it. '-infinity' when the rollup is empty (no fact counted).
#}
{% macro rollup_data_as_of() %}
    {%- if not execute -%}
        {{ return("'-infinity'::timestamptz") }}
    {%- endif -%}
    {%- set newest = run_query('select max(last_ingested_at) from ' ~ ref('fct_readings_hourly')).columns[0].values()[0] -%}
    {{ return("'-infinity'::timestamptz" if newest is none else "'" ~ newest ~ "'::timestamptz") }}
{% endmacro %}


{#
    Whether int_extension_moves_daily holds every extension reading ingested by `data_as_of` (the
    rollup's watermark literal): no reading ingested after its own newest last_ingested_at and by
    the watermark (an index probe per partition). True at parse time.
#}
{% macro extension_days_current(data_as_of) %}
    {%- if not execute -%}
        {{ return(true) }}
    {%- endif -%}
    {%- set newest = run_query('select max(last_ingested_at) from ' ~ ref('int_extension_moves_daily')).columns[0].values()[0] -%}
    {%- set query -%}
        select exists (
            select 1 from {{ ref('int_readings_unified_mm') }}
            where ingested_at <= {{ data_as_of }}
            {%- if newest is not none %} and ingested_at > '{{ newest }}'::timestamptz{% endif %}
        )
    {%- endset -%}
    {{ return(not run_query(query).columns[0].values()[0]) }}
{% endmacro %}
