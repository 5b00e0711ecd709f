"""Service settings, read from the environment (and an optional `.env`) once per process."""

from __future__ import annotations

import os
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev-secret", "placeholder"}
DEV_PROVISION_SECRET = "dev-secret"
# Outside dev mode, PROVISION_SECRET and ANALYTICS_API_KEY must be at least this long (bytes):
# 256 bits, the size of the HMAC-SHA256 key and beyond any guessing.
MIN_SECRET_BYTES = 32
GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_hex(32))'"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=PROJECT_ROOT / ".env", env_ignore_empty=True, extra="ignore")

    # Where the data lives. Unset: the embedded PostgreSQL under DATA_DIR is started and used.
    database_url: str | None = None
    data_dir: Path = PROJECT_ROOT / ".data"
    database_name: str = "iot"

    # dev mode allows the well-known development provisioning secret.
    dev_mode: bool = False
    provision_secret: str = Field(default=DEV_PROVISION_SECRET, repr=False)

    # The HTTP edge (ingest_service/core/server.py): how long the server waits on a client in each
    # phase of a connection, how large a request head may be, how many connections a worker keeps.
    keepalive_timeout_seconds: float = Field(default=5.0, gt=0)
    header_read_timeout_seconds: float = Field(default=10.0, gt=0)
    body_read_timeout_seconds: float = Field(default=30.0, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_connections: int = Field(default=4096, ge=1)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated addresses or
    # networks, uvicorn's syntax); unset: nobody's, the peer address is the client's.
    forwarded_allow_ips: str | None = None

    # Request limits: bigger bodies are refused (413) before anything is stored.
    max_body_bytes: int = 4 * 1024 * 1024
    max_inflated_bytes: int = 16 * 1024 * 1024
    max_batch_items: int = 10_000

    # Validation windows.
    max_clock_skew_seconds: float = 300.0
    startup_replay_window_seconds: float = 24 * 3600.0
    failed_startups_per_serial: int = 5
    failed_startup_window_seconds: float = 60.0
    # A delivery key (HTTP Idempotency-Key, a broker message's identity) is honoured this long after
    # its first delivery: a repeat within it returns the stored results and writes nothing.
    delivery_key_window_seconds: float = 24 * 3600.0

    # Write path: writers share a pool; a group waits at most the window, counted from its first
    # request's arrival, for more requests to share its transaction (group commit).
    pool_min_size: int = 2
    pool_max_size: int = 8
    writers: int = 4
    group_commit_window_ms: float = 2.0
    # Small groups keep several transactions in flight (the API's event loop works while PostgreSQL
    # commits) and let batches commit side by side; a request larger than the cap is a group alone.
    group_commit_max_items: int = 32
    # A request waits at most this long for the database before it gets 503 + Retry-After.
    request_timeout_seconds: float = 10.0
    retry_after_seconds: int = 1

    record_type_refresh_seconds: float = 30.0

    # Analytics (read-only routes under /analytics/ and the /dashboard page; docs/analytics.md).
    # Clients send `Authorization: Bearer <ANALYTICS_API_KEY>`. Unset: open access in dev mode,
    # analytics routes refused (503) otherwise; the ingest routes never need it.
    analytics_api_key: str | None = Field(default=None, repr=False)
    # A dedicated login for the analytics pool; unset: DATABASE_URL (or the embedded server).
    analytics_database_url: str | None = Field(default=None, repr=False)
    # Every analytics connection runs as this role (migration 0002's read-only group role), read-only.
    analytics_role: str = "iot_analyst"
    analytics_pool_max_size: int = 4
    analytics_statement_timeout_seconds: float = 15.0
    # The dbt manifest the analytics routes are generated from (marts with `meta.analytics`, their
    # columns and relations), written by `dbt parse` / `dbt build`; re-read when it changes.
    dbt_manifest_path: Path = PROJECT_ROOT / "dbt_project" / "target" / "manifest.json"
    # When the first dbt build is due (`make up` sets it): "not built yet" answers say so.
    analytics_first_build_at: datetime | None = None

    # JSON lines on stderr; INFO logs one access line per request.
    log_level: str = "WARNING"

    # Buffered ingest (docs/scaling.md): with INGEST_BUFFER=jetstream, POST /ingest checks a body's
    # framing and limits, publishes it to a JetStream stream and answers 202 with a receipt once the
    # stream has acknowledged it; `iot-platform writer` processes store it. `direct` writes in the API.
    ingest_buffer: Literal["direct", "jetstream"] = "direct"
    # Unset: nats://127.0.0.1:4222. `iot-platform up` uses buffered mode when it is set.
    nats_url: str | None = None
    # Stream names and subjects: requests go to `<prefix>.requests.<partition>`, dead letters to
    # `<prefix>.dead.<request id>` in the stream `<stream>_DEAD`.
    ingest_buffer_stream: str = "INGEST"
    ingest_buffer_subject_prefix: str = "ingest"
    ingest_buffer_consumer: str = "writers"
    # A body's partition is a hash of its first device id (or serial): one subject per partition.
    ingest_buffer_partitions: int = Field(default=16, ge=1, le=4096)
    # workqueue: a message leaves the stream once a writer acknowledged it; limits keeps it until
    # max_age / max_bytes (for other consumers to read it too). Fixed once the stream exists.
    ingest_buffer_retention: Literal["workqueue", "limits"] = "workqueue"
    ingest_buffer_storage: Literal["file", "memory"] = "file"
    ingest_buffer_replicas: int = Field(default=1, ge=1, le=5)
    # Beyond either limit the stream refuses new messages (the API answers 503), never drops old ones.
    ingest_buffer_max_bytes: int = 8 * 1024**3
    ingest_buffer_max_age_seconds: float = 7 * 86400.0
    # The stream drops a re-published request id within this window (the API's own publish retries).
    ingest_buffer_duplicate_window_seconds: float = 120.0
    # The longest the API waits for the stream's acknowledgement before 503.
    ingest_buffer_publish_timeout_seconds: float = 2.0
    # Writers: a message not acknowledged within ack_wait is redelivered (a writer that is alive keeps
    # extending it); after max_deliver failed deliveries it moves to the dead-letter stream.
    ingest_buffer_ack_wait_seconds: float = 30.0
    ingest_buffer_max_deliver: int = Field(default=5, ge=1)
    ingest_buffer_max_ack_pending: int = 20_000
    # Each writer process runs this many pull loops, each fetching up to `fetch_batch` messages (a
    # message is a whole request: 16 batches of 1,000 events are a group of 16,000).
    ingest_buffer_fetchers: int = Field(default=4, ge=1)
    ingest_buffer_fetch_batch: int = Field(default=16, ge=1)

    # MQTT door (`iot-platform mqtt`, docs/mqtt.md); `make up` starts it when MQTT_URL is set.
    # mqtt://user:password@host:1883, or mqtts:// for TLS (the system's CA certificates).
    mqtt_url: str | None = Field(default=None, repr=False)
    # Fixed per bridge process: the broker keeps the session (subscriptions, unacknowledged and queued
    # messages) of this id while the bridge is away. Each bridge of a shared group needs its own.
    mqtt_client_id: str = "iot-ingest-bridge"
    mqtt_topic_prefix: str = "devices"
    # Bridges subscribe as `$share/<group>/...` and split the messages; empty: a plain subscription.
    mqtt_shared_group: str = "ingest"
    # Messages taken but not yet acknowledged (MQTT 5 Receive Maximum): the broker holds the rest
    # while PostgreSQL is slow or down.
    mqtt_inflight: int = 256
    # How long the broker keeps the session and queues for it while the bridge is disconnected.
    mqtt_session_expiry_seconds: int = 7 * 24 * 3600
    mqtt_keepalive_seconds: int = 30

    # Data lifecycle (docs/lifecycle.md): `iot-platform archive` writes the day partitions of the ledger,
    # facts and outcomes older than this many days to Parquet under ARCHIVE_URL, verifies them and
    # drops them. Unset: keep everything (archive does nothing).
    retention_days: int | None = Field(default=None, ge=1)
    # A folder or any fsspec URL (s3://bucket/prefix needs s3fs and its credentials); unset:
    # DATA_DIR/archive.
    archive_url: str | None = None

    @property
    def resolved_archive_url(self) -> str:
        return self.archive_url or str(self.data_dir / "archive")

    @model_validator(mode="after")
    def _refuse_weak_secret(self) -> Self:
        if not self.dev_mode:
            _check_secret("PROVISION_SECRET", self.provision_secret)
        return self

    @model_validator(mode="after")
    def _refuse_weak_analytics_key(self) -> Self:
        if not self.dev_mode and self.analytics_api_key is not None:
            _check_secret("ANALYTICS_API_KEY", self.analytics_api_key)
        return self


def _check_secret(name: str, value: str) -> None:
    """Outside dev mode a secret must be real: not a placeholder, at least MIN_SECRET_BYTES long."""
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        problem = "is unset or a placeholder"
    elif len(value.encode()) < MIN_SECRET_BYTES:
        problem = f"is shorter than {MIN_SECRET_BYTES} bytes"
    else:
        return
    raise ValueError(f"{name} {problem}; generate one with {GENERATE_SECRET}, or set DEV_MODE=1 for development")


@lru_cache
def get_settings() -> Settings:
    return Settings()


def dev_environment() -> dict[str, str]:
    """Environment for the local commands (`make up`, the test suite): dev mode unless told otherwise."""
    env = dict(os.environ)
    env.setdefault("DEV_MODE", "1")
    return env
