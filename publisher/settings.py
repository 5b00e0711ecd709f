"""Publisher settings: the environment's defaults for the generator and the pipe.

Command-line options win over these; each option's environment variable is named in its `--help`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The development secret the API accepts in dev mode (ingest_service.core.config.DEV_PROVISION_SECRET).
DEV_PROVISION_SECRET = "dev-secret"


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=PROJECT_ROOT / ".env", env_ignore_empty=True, extra="ignore")


class GeneratorSettings(BaseSettings):
    """Defaults for `iot_device_message_generator` (environment variables `GENERATOR_*`)."""

    model_config = _config("GENERATOR_")

    devices: int = Field(default=5, ge=1)
    rate: float = Field(default=5.0, ge=0)  # events per second; 0 = as fast as possible
    count: int | None = Field(default=None, ge=0)  # None = unbounded
    seed: int | None = None
    start_time: float | None = None
    malformed_prob: float = Field(default=0.1, ge=0, le=1)
    # None keeps the seed generator's behaviour: every device emits both extension formats.
    new_firmware_share: float | None = Field(default=None, ge=0, le=1)
    upgrade_rate: float = Field(default=0.0, ge=0, le=1)
    provisioned_devices: int = Field(default=0, ge=0)
    firmware: str = "2.0.0"
    # Shared with the API, hence no prefix.
    provision_secret: str = Field(
        default=DEV_PROVISION_SECRET, repr=False, validation_alias=AliasChoices("PROVISION_SECRET")
    )


class PipeSettings(BaseSettings):
    """Defaults for `pipe_to_api` (environment variables `PIPE_*`)."""

    model_config = _config("PIPE_")

    url: str = "http://127.0.0.1:8000/ingest"
    batch: int = Field(default=500, ge=1)
    linger_ms: float = Field(default=200.0, ge=0)
    format: str = Field(default="ndjson", pattern="^(ndjson|json)$")
    gzip: bool = False
    concurrency: int = Field(default=1, ge=1)
    timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=10, ge=0)
    max_retry_seconds: float = Field(default=300.0, ge=0)
    backoff_initial: float = Field(default=0.25, ge=0)
    backoff_max: float = Field(default=30.0, ge=0)
    dead_letter: Path | None = None
