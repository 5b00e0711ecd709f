"""Alembic environment: migrations are plain SQL, run against the URL `ingest_service.core.migrate` passes."""

from alembic import context
from sqlalchemy import create_engine, pool

SCHEMA = "ingest"

url = context.config.get_main_option("sqlalchemy.url")
if url is None:
    raise RuntimeError("alembic: sqlalchemy.url is unset (run migrations through ingest_service.core.migrate)")
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    # Only when missing: `create schema if not exists` still needs CREATE on the database, which the
    # least-privilege roles (migration 0002) do not have.
    exists = connection.exec_driver_sql(f"select 1 from pg_namespace where nspname = '{SCHEMA}'").scalar()
    if not exists:
        connection.exec_driver_sql(f"create schema {SCHEMA}")
    # End the transaction the check began: Alembic only commits a transaction it began itself.
    connection.commit()
    context.configure(
        connection=connection,
        version_table="alembic_version",
        version_table_schema=SCHEMA,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
