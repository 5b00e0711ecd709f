"""Where the dbt project is, which dbt runs it, and how its manifest is prepared, without PATH.

`dg check defs`, `dg dev`, the webserver, the daemon and pytest are often started as
`.venv/bin/<tool>` with nothing activated: dbt is the one installed next to the running Python.
dagster-dbt's own preparer (`DbtProject.prepare_if_dev`, `dagster-dbt project prepare-and-package`)
runs the dbt it finds on PATH, so the manifest is prepared here instead, with the same `dbt parse`.

Light on purpose (dagster_dbt is imported only by `dbt_cli`): `make up` runs `python -m
orchestration.lib.dbt.cli` to prepare the manifest before Dagster starts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

if TYPE_CHECKING:
    from dagster_dbt import DbtCliResource, DbtProject

DBT_EXECUTABLE = str(Path(sys.executable).with_name("dbt"))
DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt_project"
# Dagster's own target folder: the dbt engineers' and `iot-platform dbt` runs write
# dbt_project/target/ at the same time.
DAGSTER_TARGET_PATH = Path("target", "dagster")
PARTIAL_PARSE = "partial_parse.msgpack"
MANIFEST = "manifest.json"
# dagster-dbt gives every invocation a target folder of its own, `<op>-<run id[:7]>-<uuid[:7]>`
# (its compiled SQL, manifest and run_results.json: a few MB). Two days of hourly runs are kept for
# a look at a recent run; the older ones would otherwise pile up for ever.
INVOCATION_FOLDER = re.compile(r"^\w+-[0-9a-f]{7}-[0-9a-f]{7}$")
INVOCATION_FOLDERS_KEPT = 48


def dbt_target() -> str:
    return os.getenv("DBT_TARGET", "dev")


def dbt_cli(project: DbtProject) -> DbtCliResource:
    from dagster_dbt import DbtCliResource

    return DbtCliResource(project_dir=project, dbt_executable=DBT_EXECUTABLE)


def parse_manifest(
    target_dir: Path,
    *,
    project_dir: Path = DBT_PROJECT_DIR,
    target: str | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """`dbt parse` into `target_dir`: the manifest.json the definitions load.

    dbt parses in a scratch folder (starting from the last partial parse) and the files are then
    moved into place, so a process loading the definitions meanwhile never reads a half-written
    manifest. Processes preparing at once (webserver, daemon and run workers under `dg dev`, pytest
    workers) take turns, and one that waited uses the manifest the other has just written."""
    target_dir.mkdir(parents=True, exist_ok=True)
    manifest = target_dir / MANIFEST
    before = manifest.stat().st_mtime if manifest.exists() else 0.0
    with FileLock(target_dir / "prepare.lock"):
        if manifest.exists() and manifest.stat().st_mtime > before:
            return
        with tempfile.TemporaryDirectory(dir=target_dir, prefix=".prepare-") as scratch:
            if (target_dir / PARTIAL_PARSE).exists():
                shutil.copy2(target_dir / PARTIAL_PARSE, Path(scratch) / PARTIAL_PARSE)
            command = [DBT_EXECUTABLE, "parse", "--quiet", "--target-path", scratch, "--log-path", scratch]
            command += ["--project-dir", str(project_dir), "--profiles-dir", str(project_dir)]
            command += ["--target", target or dbt_target()]
            subprocess.run(command, cwd=project_dir, env=env, check=True)
            for name in (PARTIAL_PARSE, MANIFEST):
                os.replace(Path(scratch) / name, target_dir / name)


def prune_invocation_folders(target_dir: Path, keep: int = INVOCATION_FOLDERS_KEPT) -> list[Path]:
    """Remove all but the newest `keep` invocation folders under `target_dir`; the removed ones."""
    if not target_dir.is_dir():
        return []
    folders = [p for p in target_dir.iterdir() if p.is_dir() and INVOCATION_FOLDER.match(p.name)]
    folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders[keep:]:
        shutil.rmtree(folder, ignore_errors=True)
    return folders[keep:]


def prepare(project: DbtProject) -> None:
    parse_manifest(project.project_dir / project.target_path, project_dir=project.project_dir, target=project.target)


def prepare_if_dev(project: DbtProject) -> None:
    """Prepare under `dg` / `dagster dev` (they set DAGSTER_IS_DEV_CLI), as DbtProject.prepare_if_dev
    does; anything else loads the manifest built beforehand (`make up`, the test session, CI)."""
    if os.getenv("DAGSTER_IS_DEV_CLI"):
        prepare(project)


if __name__ == "__main__":
    parse_manifest(DBT_PROJECT_DIR / DAGSTER_TARGET_PATH)
