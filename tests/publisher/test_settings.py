"""Environment defaults for the publisher tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from publisher.settings import GeneratorSettings, PipeSettings, SettingsError, read_env_file


def test_defaults_match_the_seed_generator() -> None:
    settings = GeneratorSettings.from_env({})
    assert (settings.devices, settings.rate, settings.malformed_prob) == (5, 5.0, 0.1)
    assert settings.count is None and settings.new_firmware_share is None
    assert settings.provision_secret == "dev-secret"


def test_environment_overrides_and_validation() -> None:
    env = {"GENERATOR_DEVICES": "12", "PROVISION_SECRET": "s", "PIPE_GZIP": "yes", "PIPE_FORMAT": "JSON"}
    assert GeneratorSettings.from_env(env).devices == 12
    assert GeneratorSettings.from_env(env).provision_secret == "s"
    pipe = PipeSettings.from_env(env)
    assert pipe.gzip is True and pipe.format == "json"
    with pytest.raises(SettingsError, match="GENERATOR_MALFORMED_PROB"):
        GeneratorSettings.from_env({"GENERATOR_MALFORMED_PROB": "1.5"})
    with pytest.raises(SettingsError, match="PIPE_BATCH"):
        PipeSettings.from_env({"PIPE_BATCH": "many"})


def test_read_env_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# comment\nexport PROVISION_SECRET='abc'\nPIPE_URL=http://x/ingest\nnonsense\n")
    assert read_env_file(path) == {"PROVISION_SECRET": "abc", "PIPE_URL": "http://x/ingest"}
    assert read_env_file(tmp_path / "missing") == {}
