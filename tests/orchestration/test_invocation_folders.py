"""The per-invocation dbt target folders dagster-dbt writes are pruned to the newest ones: one per
hourly run would otherwise pile up for ever. Other folders of dbt's target are never touched."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from orchestration.lib.dbt.cli import INVOCATION_FOLDER, prune_invocation_folders


def _invocation_folder(target: Path, op: str, age_s: int) -> Path:
    # As dagster-dbt names them: <op name>-<run id[:7]>-<uuid4[:7]>.
    folder = target / f"{op}-{uuid.uuid4().hex[:7]}-{str(uuid.uuid4())[:7]}"
    (folder / "compiled").mkdir(parents=True)
    (folder / "run_results.json").write_text("{}")
    stamp = 1_800_000_000 - age_s
    os.utime(folder, (stamp, stamp))
    return folder


def test_only_the_newest_invocation_folders_are_kept(tmp_path: Path) -> None:
    made = [_invocation_folder(tmp_path, "dbt_models", age_s=3600 * hour) for hour in range(6)]
    made.append(_invocation_folder(tmp_path, "rebuild_after_replay", age_s=3600 * 10))
    others = [tmp_path / "dagster", tmp_path / "compiled", tmp_path / "run"]
    for other in others:
        other.mkdir()
        os.utime(other, (0, 0))  # older than every invocation: still kept
    (tmp_path / "manifest.json").write_text("{}")

    removed = prune_invocation_folders(tmp_path, keep=3)

    assert sorted(removed) == sorted(made[3:])
    assert sorted(p for p in tmp_path.iterdir() if p.is_dir()) == sorted(made[:3] + others)
    assert (tmp_path / "manifest.json").exists()
    assert prune_invocation_folders(tmp_path, keep=3) == []
    assert prune_invocation_folders(tmp_path / "missing") == []


def test_the_name_pattern_is_dagster_dbts() -> None:
    assert INVOCATION_FOLDER.match("dbt_models-1a2b3c4-9f8e7d6")
    assert not INVOCATION_FOLDER.match("dagster")
    assert not INVOCATION_FOLDER.match("rebuild_after_replay-099f12b")  # not a whole invocation name
