-- The ledger's other staging views are parents too, unused: so every model over the facts sits
-- downstream of all the parents of the ledger accounting test, and `dbt build` skips them when it
-- fails (dbt adds a test's edges to the children of all its parents). The hourly Dagster job is one
-- dbt build: this is what stops its marts on a broken ledger.
-- depends_on: {{ ref('stg_ingest__raw_records') }}, {{ ref('stg_ingest__raw_duplicates') }}
-- depends_on: {{ ref('stg_ingest__device_startups') }}, {{ ref('stg_ingest__ingest_errors') }}

with

source as (

    select * from {{ source('ingest', 'processed_record') }}

),

renamed as (

    select
        id as processed_record_id,
        raw_record_id,
        device_id,
        record_type_id,
        record_time as observed_at,
        value,
        ingested_at

    from source

)

select * from renamed
