import dagster as dg

from orchestration.defs.dbt.project import dbt_project
from orchestration.lib.dbt.cli import dbt_cli
from orchestration.lib.postgres import PostgresResource


@dg.definitions
def resources() -> dg.Definitions:
    # Both read the POSTGRES_* namespace that `iot-platform` derives from DATABASE_URL or the embedded
    # server: dbt through dbt_project/profiles.yml, the Python checks through this resource.
    return dg.Definitions(
        resources={
            "dbt": dbt_cli(dbt_project),
            "postgres": PostgresResource(
                host=dg.EnvVar("POSTGRES_HOST"),
                port=dg.EnvVar.int("POSTGRES_PORT"),
                user=dg.EnvVar("POSTGRES_USER"),
                password=dg.EnvVar("POSTGRES_PASSWORD"),
                dbname=dg.EnvVar("POSTGRES_DB"),
            ),
        }
    )
