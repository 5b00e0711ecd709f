"""`.env.example` is generated from the settings models and must match them (scripts/env_example.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest_service.core.config import Settings
from scripts import env_example


def test_env_example_matches_the_settings_models() -> None:
    assert env_example.ENV_EXAMPLE.read_text() == env_example.render(), "run `python -m scripts.env_example`"


def test_every_setting_is_listed_with_its_default() -> None:
    text = env_example.ENV_EXAMPLE.read_text()
    for _, model in env_example.SECTIONS:
        for field in model.model_fields:
            assert f"# {env_example.env_name(model, field)}=" in text
    assert "# MAX_BATCH_ITEMS=10000\n" in text
    assert "# GENERATOR_RATE=5.0\n" in text


def test_check_fails_when_a_model_gains_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / ".env.example"
    stale.write_text(env_example.render())
    monkeypatch.setattr(env_example, "ENV_EXAMPLE", stale)
    assert env_example.main(["--check"]) == 0

    class Grown(Settings):
        brand_new_limit: int = 7

    monkeypatch.setattr(env_example, "SECTIONS", [("grown", Grown), *env_example.SECTIONS[1:]])
    assert env_example.main(["--check"]) == 1
    env_example.main([])
    assert "# BRAND_NEW_LIMIT=7\n" in stale.read_text()
