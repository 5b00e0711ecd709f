"""The dbt project Dagster orchestrates: `dbt_project/` at the repository root."""

from dagster_dbt import DbtProject

from orchestration.lib.dbt.cli import DAGSTER_TARGET_PATH, DBT_PROJECT_DIR, dbt_target, prepare_if_dev

dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    target=dbt_target(),
    # A target folder of its own, so a half-written manifest.json of another dbt run never reaches
    # a code location load.
    target_path=DAGSTER_TARGET_PATH,
)
# `dg dev` / `dg check defs` (DAGSTER_IS_DEV_CLI) parse the project here, with the venv's dbt;
# everything else expects a manifest built beforehand (`make up`, the test session, CI).
prepare_if_dev(dbt_project)
