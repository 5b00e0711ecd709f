"""Every delivery option, declared once: name, type, default, bounds and help.

`publisher.settings.PipeSettings` reads these from the environment (`PIPE_*`) and the command line;
the delivery code takes them as plain models. Kept free of httpx so the generator starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return value


def _mqtt_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"must be an mqtt:// or mqtts:// URL, got {value!r}")
    return value


class TransportChoice(BaseModel):
    model_config = ConfigDict(frozen=True)

    # One options group per transport below; `transport.open_transport` picks the class.
    transport: Literal["http", "mqtt"] = Field(
        "http", description="how batches travel: http (POST to --url) or mqtt (publish to --mqtt-url, QoS 1)"
    )
    timeout: float = Field(
        30.0,
        gt=0,
        description="seconds per batch (request, or all its PUBACKs) before it counts as failed and is retried",
    )


class HttpOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: Annotated[str, AfterValidator(_http_url)] = Field(
        "http://127.0.0.1:8000/ingest", description="ingest endpoint"
    )
    format: Annotated[Literal["ndjson", "json"], BeforeValidator(_lower)] = Field(
        "ndjson",
        description="request body: NDJSON lines (carries lines that are not JSON), or a JSON array "
        "(a batch holding a non-JSON line is sent as NDJSON)",
    )
    gzip: bool = Field(False, description="gzip request bodies (Content-Encoding: gzip)")


class MqttOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    mqtt_url: Annotated[str, AfterValidator(_mqtt_url)] = Field(
        "mqtt://127.0.0.1:1883", description="MQTT broker, mqtt:// or mqtts:// (TLS); credentials as user:password@"
    )
    mqtt_topic_prefix: str = Field(
        "", description="prepended to every topic (devices/{device_id}/telemetry, devices/{serial}/startup)"
    )


class BatchOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch: int = Field(500, ge=1, description="lines per batch (one request over http)")
    linger_ms: float = Field(
        200.0, ge=0, description="send a partial batch once its first line has waited this long (0: at once)"
    )
    concurrency: int = Field(1, ge=1, description="batches in flight; results are still accounted in input order")


class RetryPolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_retries: int = Field(10, ge=0, description="retries per batch before its lines are undelivered")
    max_retry_seconds: float = Field(300.0, ge=0, description="time budget per batch for retries")
    backoff_initial: float = Field(0.25, ge=0, description="first backoff step in seconds, doubling per retry")
    backoff_max: float = Field(
        30.0, ge=0, description="cap of the backoff step in seconds (Retry-After may ask for more)"
    )


class OutputOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    dead_letter: Path | None = Field(None, description="append undelivered lines to this file, verbatim; unset: stderr")
    progress: bool = Field(False, description="live one-line progress on stderr")
    verbose: bool = Field(False, description="print each line's result (JSON) on stderr")
    summary_json: bool = Field(False, description="print the final counts as one JSON line on stdout")


class PipeConfig(OutputOptions, RetryPolicy, BatchOptions, MqttOptions, HttpOptions, TransportChoice):
    """All delivery options (fields in the order of the bases, last first, as `--help` lists them)."""

    @property
    def destination(self) -> str:
        """Where batches go, for messages."""
        return self.mqtt_url if self.transport == "mqtt" else self.url
