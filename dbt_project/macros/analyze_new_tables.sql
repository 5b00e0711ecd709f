{#
    Statistics for a table dbt has just built whole. A table model, or an incremental one on its
    first or --full-refresh build, is a new relation without statistics, and autovacuum analyzes it
    only when a worker gets to it: on a busy database (a bulk load, the daily full refresh) that
    can be after several hourly runs, whose plans meanwhile guess a third of the table for every
    window (`last_ingested_at >= ...`) and scan all of it (at 10 M facts: the rollup test 2.0 s
    instead of 0.1 s). An incremental run keeps the table and its statistics, and PostgreSQL reads
    a bound past the histogram's end from the index, so it is not analyzed again: the check costs
    one catalog lookup.
#}
{% macro analyze_new_tables() %}
    {%- if model.config.materialized in ('table', 'incremental') -%}
        do $analyze$
        begin
            if not exists (
                select from pg_stats where schemaname = '{{ this.schema }}' and tablename = '{{ this.identifier }}'
            ) then
                analyze {{ this }};
            end if;
        end
        $analyze$
    {%- endif -%}
{% endmacro %}
