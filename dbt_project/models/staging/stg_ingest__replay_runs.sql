with

source as (

    select * from {{ source('ingest', 'replay_run') }}

),

renamed as (

    select
        id as replay_run_id,
        requested_by,
        started_at,
        finished_at,
        status,
        selection,
        selected,
        facts,
        duplicates,
        errors_changed,
        unchanged,
        skipped

    from source

)

select * from renamed
