"""Publisher settings: the environment's defaults for the generator and the pipe.

Command-line options win over these; each option's environment variable is named in its `--help`.
Plain dataclasses rather than pydantic-settings: both tools are short-lived processes started per
pipeline (and many times by the tests), and pydantic-settings alone takes most of a second to import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The development secret the API accepts in dev mode (ingest_service.core.config.DEV_PROVISION_SECRET).
DEV_PROVISION_SECRET = "dev-secret"


class SettingsError(ValueError):
    pass


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a `.env` file, as the API reads it, so both sides share PROVISION_SECRET."""
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        values[key.strip()] = value.strip().strip("'\"")
    return values


def environment() -> dict[str, str]:
    """The process environment over `.env`; empty values count as unset (as `env_ignore_empty`)."""
    merged = {**read_env_file(PROJECT_ROOT / ".env"), **os.environ}
    return {key: value for key, value in merged.items() if value != ""}


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _in_range(low: float | None = None, high: float | None = None) -> Callable[[float], None]:
    def check(value: float) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(
                f"must be within {low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            )

    return check


def setting(
    default: Any, parse: Callable[[str], Any], env: str | None = None, check: Callable[[Any], None] | None = None
) -> Any:
    return field(default=default, metadata={"parse": parse, "env": env, "check": check})


class _FromEnv:
    PREFIX = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = environment() if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            name = f.metadata.get("env") or cls.PREFIX + f.name.upper()
            if name not in env:
                continue
            try:
                value = f.metadata["parse"](env[name])
                if f.metadata.get("check") is not None:
                    f.metadata["check"](value)
            except ValueError as exc:
                raise SettingsError(f"{name}={env[name]!r}: {exc}") from exc
            values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class GeneratorSettings(_FromEnv):
    """Defaults for `iot_device_message_generator` (environment variables `GENERATOR_*`)."""

    PREFIX = "GENERATOR_"

    devices: int = setting(5, int, check=_in_range(1))
    rate: float = setting(5.0, float, check=_in_range(0))  # events per second; 0 = as fast as possible
    count: int | None = setting(None, int, check=_in_range(0))  # None = unbounded
    seed: int | None = setting(None, int)
    start_time: float | None = setting(None, float)
    malformed_prob: float = setting(0.1, float, check=_in_range(0, 1))
    # None keeps the seed generator's behaviour: every device emits both extension formats.
    new_firmware_share: float | None = setting(None, float, check=_in_range(0, 1))
    upgrade_rate: float = setting(0.0, float, check=_in_range(0, 1))
    provisioned_devices: int = setting(0, int, check=_in_range(0))
    firmware: str = setting("2.0.0", str)
    # Shared with the API, hence no prefix.
    provision_secret: str = field(
        default=DEV_PROVISION_SECRET, repr=False, metadata={"parse": str, "env": "PROVISION_SECRET"}
    )


@dataclass(frozen=True)
class PipeSettings(_FromEnv):
    """Defaults for `pipe_to_api` (environment variables `PIPE_*`)."""

    PREFIX = "PIPE_"

    url: str = setting("http://127.0.0.1:8000/ingest", str)
    batch: int = setting(500, int, check=_in_range(1))
    linger_ms: float = setting(200.0, float, check=_in_range(0))
    format: str = setting("ndjson", str.lower, check=lambda v: _one_of(v, ("ndjson", "json")))
    gzip: bool = setting(False, _bool)
    concurrency: int = setting(1, int, check=_in_range(1))
    timeout: float = setting(30.0, float, check=_in_range(0.001))
    max_retries: int = setting(10, int, check=_in_range(0))
    max_retry_seconds: float = setting(300.0, float, check=_in_range(0))
    backoff_initial: float = setting(0.25, float, check=_in_range(0))
    backoff_max: float = setting(30.0, float, check=_in_range(0))
    dead_letter: Path | None = setting(None, Path)


def _one_of(value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
