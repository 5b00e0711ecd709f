"""Environment defaults for the publisher tools."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from publisher.settings import GeneratorSettings, PipeSettings, SettingsError, load


@pytest.fixture
def from_env(monkeypatch: pytest.MonkeyPatch):
    """Settings from exactly `env` (the process environment and the repo's `.env` left out)."""

    def build(model: type[BaseSettings], env: dict[str, str], env_file: Path | None = None) -> BaseSettings:
        for name in list(os.environ):
            if name.startswith(("GENERATOR_", "PIPE_")) or name == "PROVISION_SECRET":
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return load(model, _env_file=env_file)

    return build


def test_defaults_match_the_seed_generator(from_env) -> None:
    settings = from_env(GeneratorSettings, {})
    assert (settings.devices, settings.rate, settings.malformed_prob) == (5, 5.0, 0.1)
    assert settings.count is None and settings.new_firmware_share is None
    assert settings.secret == "dev-secret"


def test_environment_overrides_and_validation(from_env) -> None:
    env = {"GENERATOR_DEVICES": "12", "PROVISION_SECRET": "s", "PIPE_GZIP": "yes", "PIPE_FORMAT": "JSON"}
    assert from_env(GeneratorSettings, env).devices == 12
    assert from_env(GeneratorSettings, env).secret == "s"
    assert from_env(GeneratorSettings, {"GENERATOR_SECRET": "x"}).secret == "dev-secret"  # PROVISION_SECRET only
    pipe = from_env(PipeSettings, env)
    assert pipe.gzip is True and pipe.format == "json"
    with pytest.raises(SettingsError, match="GENERATOR_MALFORMED_PROB"):
        from_env(GeneratorSettings, {"GENERATOR_MALFORMED_PROB": "1.5"})
    with pytest.raises(SettingsError, match="PIPE_BATCH"):
        from_env(PipeSettings, {"PIPE_BATCH": "many"})


def test_env_file(tmp_path: Path, from_env) -> None:
    path = tmp_path / ".env"
    path.write_text("# comment\nexport PROVISION_SECRET='abc'\nPIPE_URL=http://x/ingest\nnonsense\n")
    assert from_env(GeneratorSettings, {}, env_file=path).secret == "abc"
    assert from_env(PipeSettings, {}, env_file=path).url == "http://x/ingest"
    assert from_env(PipeSettings, {}, env_file=tmp_path / "missing").url == "http://127.0.0.1:8000/ingest"


def test_docs_tables_list_every_option_with_its_variable() -> None:
    """docs/publisher.md's option tables name each option and its variable as the models declare them."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "publisher.md").read_text()
    rows = set(re.findall(r"^\| `(--[a-z-]+)[^`]*`[^|]*\| `([A-Z_]+)` \|", docs, flags=re.MULTILINE))
    for model in (GeneratorSettings, PipeSettings):
        prefix = model.model_config["env_prefix"]
        for name, field in model.model_fields.items():
            if field.validation_alias is None:
                assert ("--" + name.replace("_", "-"), prefix + name.upper()) in rows, name
