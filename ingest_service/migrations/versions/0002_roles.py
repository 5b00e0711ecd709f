"""Least-privilege group roles: the API writes the ledger, the analyst reads the dbt output, Dagster owns it.

Roles are NOLOGIN groups; a deployment creates a LOGIN role per service and grants it the group
(docs/security.md). Roles are cluster-wide, so they are created only when missing; the grants are
per database. Additive and idempotent: every statement may run again.

| group        | may                                                                                   |
|--------------|---------------------------------------------------------------------------------------|
| iot_ingest   | insert + select the ledger and the outcome tables, insert/update devices, read types;  |
|              | never update, delete or truncate the ledger, never read analytics                     |
| iot_analyst  | read the dbt output schema `analytics` (tables dbt creates later too), nothing else    |
| iot_dagster  | own `analytics`, create schemas in the database (dbt's `analytics_staging`, Dagster's |
|              | storage), read the ingest schema                                                       |

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROLES = ("iot_ingest", "iot_analyst", "iot_dagster")

CREATE_ROLES = """
do $$
declare
    role_name text;
    may_create boolean := (select rolsuper or rolcreaterole from pg_roles where rolname = current_user);
begin
    foreach role_name in array array['iot_ingest', 'iot_analyst', 'iot_dagster'] loop
        if not exists (select from pg_roles where rolname = role_name) then
            if not may_create then
                raise warning 'role % is missing and % may not create roles; ask a DBA for: create role % nologin',
                    role_name, current_user, role_name;
                continue;
            end if;
            begin
                execute format('create role %I nologin', role_name);
            exception when duplicate_object or unique_violation then
                null;  -- created meanwhile by a migration of another database on this server
            end;
        end if;
    end loop;
end
$$;
"""

# Run only when all three roles exist (see CREATE_ROLES); `current_user` is the migrating (owner) role.
GRANTS = """
-- the API: the ledger and its outcomes are append-only for it
grant usage on schema ingest to iot_ingest;
grant select, insert on
    ingest.raw_record, ingest.processed_record, ingest.raw_duplicate, ingest.device_startup, ingest.ingest_error
    to iot_ingest;
grant select, insert, update on ingest.device to iot_ingest;
grant select on ingest.record_type, ingest.alembic_version to iot_ingest;
grant usage on all sequences in schema ingest to iot_ingest;
revoke update, delete, truncate on ingest.raw_record from iot_ingest;

-- Dagster (and the dbt it runs): owns the dbt output, reads the base tables
create schema if not exists analytics authorization iot_dagster;
grant usage, create on schema analytics to iot_dagster;
grant usage on schema ingest to iot_dagster;
grant select on all tables in schema ingest to iot_dagster;
alter default privileges in schema ingest grant select on tables to iot_dagster;

-- the analyst: the dbt output only, including what dbt builds later (as Dagster's role, or as the
-- migrating role in a single-user development setup)
grant usage on schema analytics to iot_analyst;
grant select on all tables in schema analytics to iot_analyst;
alter default privileges for role iot_dagster in schema analytics grant select on tables to iot_analyst;
alter default privileges in schema analytics grant select on tables to iot_analyst;
"""

DATABASE_GRANTS = """
do $$
begin
    -- dbt creates `analytics_staging` and Dagster its storage schema: CREATE on the database.
    -- (A database copied with CREATE DATABASE ... TEMPLATE does not inherit these database-level grants.)
    execute format('grant connect, create on database %I to iot_dagster', current_database());
    execute format('grant connect on database %I to iot_ingest, iot_analyst', current_database());
end
$$;
"""


def upgrade() -> None:
    op.execute(CREATE_ROLES)
    bind = op.get_bind()
    present = bind.exec_driver_sql(
        "select count(*) from pg_roles where rolname in ('iot_ingest', 'iot_analyst', 'iot_dagster')"
    ).scalar()
    if present != len(ROLES):
        return  # warned above: the grants wait for the roles (docs/security.md)
    op.execute(GRANTS)
    op.execute(DATABASE_GRANTS)


def downgrade() -> None:
    # Schema changes are additive: roll back by redeploying the previous API.
    raise NotImplementedError("additive migrations are not rolled back")
