{#
    One row per raw record and outcome (int_raw_record_outcomes). With `from_raw_id`, only the ledger
    rows from that id on and their outcomes: a literal bound on raw_record_id in every branch, so
    each reads its raw_record_id index (the incremental ingest_parse), and each duplicate's fact is
    one probe by its id. PostgreSQL does not carry a range on the joined received_at into the
    union, so the bound must be written into each branch.
#}
{% macro raw_record_outcomes(from_raw_id=none) %}

with

raw_records as (

    select * from {{ ref('stg_ingest__raw_records') }}
    {{- raw_id_at_least(from_raw_id) }}

),

facts as not materialized (

    select * from {{ ref('stg_ingest__processed_records') }}

),

duplicates as (

    select * from {{ ref('stg_ingest__raw_duplicates') }}
    {{- raw_id_at_least(from_raw_id) }}

),

startups as (

    select * from {{ ref('stg_ingest__device_startups') }}
    {{- raw_id_at_least(from_raw_id) }}

),

errors as (

    select * from {{ ref('stg_ingest__ingest_errors') }}
    {{- raw_id_at_least(from_raw_id) }}

),

record_types as (

    select * from {{ ref('stg_ingest__record_types') }}

),

outcomes as (

    select
        raw_record_id,
        'processed' as outcome,
        device_id,
        processed_record_id,
        record_type_id,
        null::text as event_type,
        null::text as reason,
        null::text as detail
    from facts
    {{- raw_id_at_least(from_raw_id) }}

    union all

    select
        duplicates.raw_record_id,
        'duplicate' as outcome,
        facts.device_id,
        duplicates.processed_record_id,
        facts.record_type_id,
        null::text as event_type,
        null::text as reason,
        null::text as detail
    from duplicates
    {%- if from_raw_id is not none %}
    -- A window's few duplicates each probe the facts' primary key: a join the planner may hash
    -- would scan every fact (2 s at 10 M facts) for them.
    left join lateral (
        select
            facts.device_id,
            facts.record_type_id
        from facts
        where facts.processed_record_id = duplicates.processed_record_id  -- noqa: RF03
        offset 0  -- noqa: AM09
    ) as facts on true
    {%- else %}
    left join facts
        on duplicates.processed_record_id = facts.processed_record_id
    {%- endif %}

    union all

    select
        raw_record_id,
        'provisioned' as outcome,
        device_id,
        null::bigint as processed_record_id,
        null::smallint as record_type_id,
        'device_startup' as event_type,
        null::text as reason,
        null::text as detail
    from startups

    union all

    select
        raw_record_id,
        'error' as outcome,
        device_id,
        null::bigint as processed_record_id,
        null::smallint as record_type_id,
        event_type,
        reason,
        detail
    from errors

),

classified as (

    select
        raw_records.raw_record_id,
        raw_records.received_at,
        raw_records.request_id,
        raw_records.batch_index,
        outcomes.outcome,
        outcomes.device_id,
        outcomes.processed_record_id,
        coalesce(outcomes.record_type_id, named_types.record_type_id) as record_type_id,
        coalesce(fact_types.record_type_name, outcomes.event_type) as event_type,
        case
            when fact_types.payload_format is not null then fact_types.payload_format
            when named_types.payload_format is not null then named_types.payload_format
            when outcomes.event_type = 'device_startup' then 'startup'
            else 'unknown'
        end as payload_format,
        outcomes.reason,
        outcomes.detail

    from raw_records
    left join outcomes
        on raw_records.raw_record_id = outcomes.raw_record_id
    left join record_types as fact_types
        on outcomes.record_type_id = fact_types.record_type_id
    left join record_types as named_types
        on outcomes.record_type_id is null and outcomes.event_type = named_types.record_type_name

)

select * from classified

{% endmacro %}


{% macro raw_id_at_least(from_raw_id) %}
    {%- if from_raw_id is not none %}
    where raw_record_id >= {{ from_raw_id }}
    {%- endif %}
{% endmacro %}


{# The oldest ledger id among the rows `where` selects (none at parse time; past every id when none). #}
{% macro first_raw_id(where) %}
    {%- if not execute -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set query -%}
        select coalesce(min(raw_record_id), 9223372036854775807) from {{ ref('stg_ingest__raw_records') }}
        where {{ where }}
    {%- endset -%}
    {{ return(run_query(query).columns[0].values()[0]) }}
{% endmacro %}
