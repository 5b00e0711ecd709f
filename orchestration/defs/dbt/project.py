"""The dbt project Dagster orchestrates: `dbt_project/` at the repository root."""

import os
from pathlib import Path

from dagster_dbt import DbtProject

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"

# `dg dev` / `dg check defs` (DAGSTER_IS_DEV_CLI) parse the project here; everything else expects a
# manifest built beforehand (`make up` via orchestration.lib.launch, the test session, CI).
dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    target=os.getenv("DBT_TARGET", "dev"),
    # Its own target folder: the dbt engineers' and `iot-platform dbt` runs write dbt_project/target/
    # at the same time, and a half-written manifest.json must never reach a code location load.
    target_path=Path("target", "dagster"),
)
dbt_project.prepare_if_dev()
