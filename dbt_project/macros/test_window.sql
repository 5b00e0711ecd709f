{#
    The hourly run's tests read only the changed window; the daily run's read all history.

    With DBT_TEST_SINCE (an ISO timestamp in the environment: the Dagster hourly job sets the rollup's
    watermark before its build), a generic test over a relation with a window column sees only the
    rows at or after it minus `rollup_lookback_minutes` (what the build re-reads):
    - a source: its `loaded_at_field` (the same column freshness reads);
    - a model: `config.meta.test_window.column` (and `grain: day` for a date column: the whole UTC
      day that holds test_since).
    Relations without one (the per-device metrics, the seeds, the small lookup tables) are tested
    whole: they are small. Unset (`dbt build`, the daily job), every test reads everything.
    Singular tests call `in_test_window` on their own columns.
#}

{#
    The window's start, from the environment variable DBT_TEST_SINCE (empty: no window). Read only
    when executing: dbt re-parses the whole project when a var changes, and an environment variable
    read while parsing would make it re-parse every test each hour; read at execution time, a new
    value costs nothing.
#}
{% macro test_since() %}
    {{ return(env_var('DBT_TEST_SINCE', '') if execute else '') }}
{% endmacro %}


{# SQL predicate: `column` is in the test window (`true` without a window). #}
{% macro in_test_window(column, grain=none) %}
    {%- set since = test_since() -%}
    {%- if not since -%}
        true
    {%- else -%}
        {#- Literals (minus_minutes_literal): the planner then sees how few rows the window holds. -#}
        {%- set start = minus_minutes_literal(since, var('rollup_lookback_minutes')) -%}
        {%- if grain == 'day' -%}
            {{ column }} >= ({{ start }} at time zone 'UTC')::date
        {%- else -%}
            {{ column }} >= {{ start }}
        {%- endif -%}
    {%- endif -%}
{% endmacro %}


{# The window column (and grain) of the source or model `relation` is built into, or none. #}
{% macro test_window_of(relation) %}
    {%- set wanted = (relation.schema ~ '.' ~ relation.identifier) | lower -%}
    {%- for source in graph.sources.values() -%}
        {%- if (source.schema ~ '.' ~ source.identifier) | lower == wanted and source.loaded_at_field -%}
            {{ return({'column': source.loaded_at_field}) }}
        {%- endif -%}
    {%- endfor -%}
    {%- for node in graph.nodes.values() if node.resource_type == 'model' -%}
        {%- if (node.schema ~ '.' ~ node.alias) | lower == wanted -%}
            {{ return(node.config.meta.get('test_window')) }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(none) }}
{% endmacro %}


{# dbt's generic tests read `get_where_subquery(model)`: the test's own `where`, and the window. #}
{% macro postgres__get_where_subquery(relation) -%}
    {%- set filters = [] -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- do filters.append('(' ~ where ~ ')') -%}
    {%- endif -%}
    {%- if test_since() -%}
        {%- set window = test_window_of(relation) -%}
        {%- if window -%}
            {%- do filters.append(in_test_window(window['column'], window.get('grain'))) -%}
        {%- endif -%}
    {%- endif -%}
    {%- if filters -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ filters | join(' and ') }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}


{#
    dbt's relationships test, with the parent scoped as well when the test says the parent of a
    child row in the window is itself in the window (`config.meta.parent_in_test_window: true`:
    e.g. ingest_parse's raw_record_id, whose row has the same received_at as the ledger row). Without
    it, the hourly run's test would still read the whole parent (every ledger row) for the few child
    rows of the window. Otherwise it is dbt's own test.
#}
{% macro postgres__test_relationships(model, column_name, to, field) %}
    {%- set meta = config.get('meta') or {} -%}
    {%- set parent = to -%}
    {%- set window = test_window_of(to) if test_since() and meta.get('parent_in_test_window') else none -%}
    {%- if window -%}
        {%- set parent -%}
            (select * from {{ to }} where {{ in_test_window(window['column'], window.get('grain')) }}) as parent_window
        {%- endset -%}
    {%- endif %}

with child as (
    select {{ column_name }} as from_field
    from {{ model }}
    where {{ column_name }} is not null
),

parent as (
    select {{ field }} as to_field
    from {{ parent }}
)

select
    from_field

from child
left join parent
    on child.from_field = parent.to_field

where parent.to_field is null

{% endmacro %}
