"""Publisher settings: each option is a field of the core's models (`events.FleetConfig`,
`delivery.config.PipeConfig`), declared once; pydantic-settings reads it from the command line, the
environment and the repo's `.env` (as the API does), and builds `--help` from it.

The command line wins over the environment, the environment over the default; empty values count as
unset. pydantic-settings costs about 0.4 s of start-up per process (measured: `python -X importtime`),
which these short-lived tools pay for having one declaration per option instead of five.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict

from publisher.delivery.config import PipeConfig
from publisher.events import FleetConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]

S = TypeVar("S", bound=BaseSettings)

_COMMON = SettingsConfigDict(
    env_file=PROJECT_ROOT / ".env",
    env_ignore_empty=True,
    extra="ignore",
    cli_kebab_case=True,
    cli_implicit_flags=True,  # bools as --flag / --no-flag
    cli_show_env_vars=True,
    cli_hide_none_type=True,
    cli_avoid_json=True,
)


class SettingsError(ValueError):
    """A setting with a bad value; the message names the option or the variable it came from."""


class GeneratorSettings(BaseSettings, FleetConfig):
    """The simulator's options (environment variables `GENERATOR_*`; the secret is `PROVISION_SECRET`)."""

    # By its alias only: the secret is PROVISION_SECRET, never GENERATOR_SECRET.
    model_config = SettingsConfigDict(**_COMMON, env_prefix="GENERATOR_", validate_by_name=False)

    rate: float = Field(5.0, ge=0, description="events per second; 0 = as fast as possible")
    count: int | None = Field(None, ge=0, description="stop after this many events; unset: unbounded")
    seed: int | None = Field(
        None, description="random seed: reproducible values and a simulated clock (1/rate s per event)"
    )
    start_time: float | None = Field(
        None,
        description="simulated clock start in epoch seconds (implies the simulated clock); with --seed the "
        "output is byte-identical across runs; unset: now",
    )


class PipeSettings(BaseSettings, PipeConfig):
    """Delivery options (environment variables `PIPE_*`)."""

    model_config = SettingsConfigDict(**_COMMON, env_prefix="PIPE_", cli_shortcuts={"verbose": "v"})


def _source_name(model: type[BaseSettings], field: str, from_cli: set[str]) -> str:
    if field in from_cli:
        return "--" + field.replace("_", "-")
    info = model.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"{model.model_config.get('env_prefix', '')}{field}".upper()


def _describe(exc: ValidationError, model: type[BaseSettings], from_cli: set[str]) -> str:
    messages = []
    for error in exc.errors():
        # Our validators say "must be ..."; pydantic's own messages start "Input should be ...".
        message = error["msg"].removeprefix("Value error, ").removeprefix("Input ")
        if error["loc"]:
            message = f"{_source_name(model, str(error['loc'][0]), from_cli)} {message}"
        messages.append(message)
    return "; ".join(messages)


def load(model: type[S], cli: CliSettingsSource[Any] | None = None, **init: Any) -> S:
    """The settings from `cli` (parsed command-line values), the environment and `.env`."""
    try:
        return model(_cli_settings_source=cli, **init)
    except ValidationError as exc:
        from_cli = set(cli()) if cli is not None else set()
        raise SettingsError(_describe(exc, model, from_cli)) from exc


class Parsed:
    def __init__(self, values: dict[type[BaseSettings], BaseSettings]) -> None:
        self._values = values

    def __getitem__(self, model: type[S]) -> S:
        value = self._values[model]
        assert isinstance(value, model)
        return value


def parse_args(argv: Sequence[str] | None, prog: str, description: str, models: Sequence[type[BaseSettings]]) -> Parsed:
    """One command line for the options of all `models`; bad options or environment exit 2."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Each option's default comes from the environment variable shown (or the repo's .env), "
        "else the default shown; the command line wins.",
    )
    sources: list[CliSettingsSource[Any]] = [CliSettingsSource(model, root_parser=parser) for model in models]
    namespace = parser.parse_args(argv)
    values: dict[type[BaseSettings], BaseSettings] = {}
    for model, source in zip(models, sources, strict=True):
        try:
            values[model] = load(model, source(parsed_args=namespace))
        except SettingsError as exc:
            parser.error(str(exc))
    return Parsed(values)
