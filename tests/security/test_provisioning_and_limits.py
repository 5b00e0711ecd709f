"""Provisioning hardening (constant-time HMAC, replay window, failed-startup rate limit), configurable
request limits, and secrets that refuse placeholders and short values outside dev mode."""

from __future__ import annotations

import gzip
import hmac
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from ingest_service.core.config import GENERATE_SECRET, MIN_SECRET_BYTES, PLACEHOLDER_SECRETS, PROJECT_ROOT, Settings
from ingest_service.core.database import DatabaseTarget
from ingest_service.ingest import validation
from ingest_service.main import create_app
from platform_cli.processes import iot_platform
from tests.ingest_service.conftest import SECRET, make_settings
from tests.utils.events import startup, telemetry, token


def served(target: DatabaseTarget, **overrides: object) -> TestClient:
    return TestClient(create_app(make_settings(target, **overrides)))


def _errors(db: psycopg.Connection) -> list[tuple[str, str]]:
    return db.execute("select reason, event_type from ingest.ingest_error order by raw_record_id").fetchall()


def _raw_count(db: psycopg.Connection) -> int:
    row = db.execute("select count(*) from ingest.raw_record").fetchone()
    assert row is not None
    return row[0]


# --- provisioning -------------------------------------------------------------------------------------


def test_startup_token_is_compared_in_constant_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(validation.hmac, "compare_digest", spy)
    good = client.post("/ingest", json=startup(SECRET, "SN-CT-1"))
    bad = client.post("/ingest", json=startup(SECRET, "SN-CT-2", provision_token=token(SECRET, "SN-CT-1")))
    assert (good.status_code, bad.status_code) == (200, 401)
    assert bad.json()["reason"] == "invalid_token"
    assert len(compared) == 2


def test_startup_older_than_replay_window_is_stale(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    with served(fresh_db, startup_replay_window_seconds=600) as client:
        stale = client.post("/ingest", json=startup(SECRET, "SN-OLD", timestamp=time.time() - 601))
        assert stale.status_code == 401
        assert (stale.json()["status"], stale.json()["reason"]) == ("unauthorized", "stale_startup")
        # the token is checked first: a stale event with a bad token cannot probe for valid serials
        forged = client.post("/ingest", json=startup("wrong", "SN-OLD2", timestamp=time.time() - 601))
        assert forged.json()["reason"] == "invalid_token"
        fresh = client.post("/ingest", json=startup(SECRET, "SN-OLD", timestamp=time.time() - 599))
        assert (fresh.status_code, fresh.json()["status"]) == (200, "provisioned")
    assert _errors(db) == [("stale_startup", "device_startup"), ("invalid_token", "device_startup")]
    assert db.execute("select serial from ingest.device").fetchall() == [("SN-OLD",)]


def test_failed_startups_lock_the_serial_with_429(fresh_db: DatabaseTarget, db: psycopg.Connection) -> None:
    with served(fresh_db, failed_startups_per_serial=3, failed_startup_window_seconds=60) as client:
        for _ in range(2):
            assert client.post("/ingest", json=startup("guess", "SN-BRUTE")).status_code == 401
        stale = startup(SECRET, "SN-BRUTE", timestamp=time.time() - 2 * 86400)
        assert client.post("/ingest", json=stale).json()["reason"] == "stale_startup"  # counts as a failure
        locked = client.post("/ingest", json=startup(SECRET, "SN-BRUTE"))  # now even a valid token
        assert locked.status_code == 429
        body = locked.json()
        assert (body["status"], body["reason"]) == ("rate_limited", "too_many_failed_startups")
        assert 1 <= int(locked.headers["retry-after"]) <= 60
        assert body["raw_id"] is not None  # stored, like every answered body
        in_batch = client.post("/ingest", json=[startup(SECRET, "SN-BRUTE"), telemetry(device_id=1)])
        assert in_batch.status_code == 200
        assert [r["status"] for r in in_batch.json()] == ["rate_limited", "ok"]
        other = client.post("/ingest", json=startup(SECRET, "SN-INNOCENT"))
        assert other.json()["status"] == "provisioned"
    assert db.execute("select count(*) from ingest.device where serial = 'SN-BRUTE'").fetchone() == (0,)
    limited = db.execute("select count(*) from ingest.ingest_error where reason = 'too_many_failed_startups'")
    assert limited.fetchone() == (2,)


def test_rate_limit_recovers_after_the_window(fresh_db: DatabaseTarget) -> None:
    window = 0.5
    with served(fresh_db, failed_startups_per_serial=2, failed_startup_window_seconds=window) as client:
        for _ in range(2):
            client.post("/ingest", json=startup("guess", "SN-WAIT"))
        locked = client.post("/ingest", json=startup(SECRET, "SN-WAIT"))
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) == math.ceil(window)  # never "0" for a sub-second window
        time.sleep(window + 0.1)
        assert client.post("/ingest", json=startup(SECRET, "SN-WAIT")).json()["status"] == "provisioned"


# --- limits ----------------------------------------------------------------------------------------------


def test_limits_are_configurable_and_refused_bodies_store_nothing(
    fresh_db: DatabaseTarget, db: psycopg.Connection
) -> None:
    limits = {"max_body_bytes": 400, "max_batch_items": 3, "max_inflated_bytes": 600}
    event = json.dumps(telemetry(device_id=1, value=1)).encode()
    with served(fresh_db, **limits) as client:
        at_limit = event + b" " * (400 - len(event))
        assert client.post("/ingest", content=at_limit).status_code == 200
        over = client.post("/ingest", content=at_limit + b" ")
        assert (over.status_code, over.json()["reason"]) == (413, "body_too_large")
        chunked = client.post("/ingest", content=iter([at_limit, b" "]))  # no Content-Length
        assert (chunked.status_code, chunked.json()["reason"]) == (413, "body_too_large")

        three = [telemetry(device_id=2, value=v) for v in (1, 2, 3)]
        assert client.post("/ingest", json=three).status_code == 200
        four = client.post("/ingest", json=[*three, telemetry(device_id=2, value=4)])
        assert (four.status_code, four.json()["reason"]) == (413, "too_many_items")
        ndjson = client.post("/ingest", content=b"{}\n" * 4, headers={"content-type": "application/x-ndjson"})
        assert (ndjson.status_code, ndjson.json()["reason"]) == (413, "too_many_items")

        gz = {"content-encoding": "gzip"}
        inflates_to_limit = event + b" " * (600 - len(event))
        assert client.post("/ingest", content=gzip.compress(inflates_to_limit), headers=gz).status_code == 200
        bomb = client.post("/ingest", content=gzip.compress(inflates_to_limit + b" "), headers=gz)
        assert (bomb.status_code, bomb.json()["reason"]) == (413, "inflated_too_large")
        assert all(r.json()["stored"] is False for r in (over, chunked, four, ndjson, bomb))
    assert _raw_count(db) == 1 + 3 + 1


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"MAX_BODY_BYTES": "123", "MAX_BATCH_ITEMS": "7", "MAX_INFLATED_BYTES": "456", "DEV_MODE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.max_body_bytes, settings.max_batch_items, settings.max_inflated_bytes) == (123, 7, 456)


# --- secrets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [*sorted(PLACEHOLDER_SECRETS), " Dev-Secret ", "CHANGEME"])
def test_placeholder_secret_is_refused_outside_dev_mode(secret: str) -> None:
    with pytest.raises(ValidationError, match="PROVISION_SECRET"):
        Settings(_env_file=None, dev_mode=False, provision_secret=secret)  # type: ignore[call-arg]
    assert Settings(_env_file=None, dev_mode=True, provision_secret=secret)  # type: ignore[call-arg]


def test_unset_secret_is_refused_outside_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV_MODE", "0")
    monkeypatch.delenv("PROVISION_SECRET", raising=False)
    with pytest.raises(ValidationError, match="PROVISION_SECRET"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("PROVISION_SECRET", "a-real-secret-from-the-environment")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert "a-real-secret" not in repr(settings)


@pytest.mark.parametrize("name", ["provision_secret", "analytics_api_key"])
def test_a_secret_shorter_than_32_bytes_is_refused_outside_dev_mode(name: str) -> None:
    real = {"provision_secret": "p" * MIN_SECRET_BYTES, "analytics_api_key": "k" * MIN_SECRET_BYTES}
    with pytest.raises(ValidationError, match=re.escape(GENERATE_SECRET)) as refused:
        Settings(_env_file=None, dev_mode=False, **{**real, name: "x" * (MIN_SECRET_BYTES - 1)})  # type: ignore[call-arg]
    assert name.upper() in str(refused.value) and "32 bytes" in str(refused.value)
    assert Settings(_env_file=None, dev_mode=False, **real)  # type: ignore[call-arg]
    assert Settings(_env_file=None, dev_mode=True, **{**real, name: "x"})  # type: ignore[call-arg]


def test_the_length_is_counted_in_bytes() -> None:
    sixteen_two_byte_chars = "é" * 16  # 16 characters, 32 bytes of UTF-8
    assert Settings(_env_file=None, dev_mode=False, provision_secret=sixteen_two_byte_chars)  # type: ignore[call-arg]


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "variable, value",
    [("PROVISION_SECRET", "changeme"), ("PROVISION_SECRET", "x"), ("ANALYTICS_API_KEY", "a")],
)
def test_serve_refuses_to_start_with_a_weak_secret(fresh_db: DatabaseTarget, variable: str, value: str) -> None:
    env = {**os.environ, "DEV_MODE": "0", "PROVISION_SECRET": "p" * MIN_SECRET_BYTES, "DATABASE_URL": fresh_db.url}
    env[variable] = value
    result = subprocess.run(
        iot_platform("serve", "--port", "1", "--no-migrate"),
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode != 0
    assert variable in result.stderr and GENERATE_SECRET in result.stderr


@pytest.fixture
def client(fresh_db: DatabaseTarget) -> Iterator[TestClient]:
    with served(fresh_db) as test_client:
        yield test_client
