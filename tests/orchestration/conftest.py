"""Fixtures for the Dagster definitions: a prepared dbt manifest, and a database filled by the API."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget, tool_environment
from ingest_service.main import create_app
from tests.utils.events import startup, telemetry

SECRET = "test-provision-secret"
DAY = 86_400


@pytest.fixture(scope="session", autouse=True)
def dbt_manifest() -> Path:
    """dbt_project's manifest, built once per session before any defs module reads it (never committed)."""
    from orchestration.defs.dbt.project import dbt_project
    from orchestration.lib.dbt.cli import prepare

    prepare(dbt_project)  # under `pytest -n 2` both workers may get here at once: they take turns
    return dbt_project.manifest_path


@pytest.fixture
def dagster_env(fresh_db: DatabaseTarget, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> DatabaseTarget:
    """Points dbt (profiles.yml) and the postgres resource at the test database, DAGSTER_HOME at tmp."""
    for key, value in tool_environment(fresh_db, base={}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DBT_TARGET", "dev")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    (tmp_path / "dagster_home").mkdir()
    return fresh_db


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def db(fresh_db: DatabaseTarget) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db.url, autocommit=True) as conn:
        yield conn


@dataclass
class Ingested:
    telemetry: int
    malformed: int
    statuses: dict[str, int]


def post(target: DatabaseTarget, batches: list[list[dict]]) -> dict[str, int]:
    """POST each batch to /ingest through the real app; returns the count of each item status."""
    settings = Settings(dev_mode=True, database_url=target.url, provision_secret=SECRET, group_commit_window_ms=0.5)
    statuses: dict[str, int] = {}
    with TestClient(create_app(settings)) as client:
        for batch in batches:
            response = client.post("/ingest", json=batch)
            assert response.status_code == 200, response.text
            for item in response.json():
                statuses[item["status"]] = statuses.get(item["status"], 0) + 1
    return statuses


def fleet_events(*, days_ago: tuple[int, ...] = (2, 1), devices: int = 8, per_device_day: int = 12, seed: int = 7):
    """A small fleet over past UTC days: legacy ticks, new mm (some devices on both), battery, height.

    Devices 1-3 are legacy, 4-6 new, 7-8 migrate from ticks to mm; about 8% of items are malformed
    in the shapes the simulator sends, spread so that no format's error rate nears the threshold.
    """
    rng = random.Random(seed)
    today = int(time.time() // DAY) * DAY
    events: list[dict] = []
    malformed = 0
    for ago in days_ago:
        start = today - ago * DAY + 3600
        for device in range(1, devices + 1):
            for i in range(per_device_day):
                ts = start + i * 1800 + device * 7 + rng.random()
                legacy = device <= 3 or (device >= 7 and i < per_device_day // 2)
                if legacy:
                    events.append(telemetry(device, "platform_extension_ticks", rng.randint(0, 3000), ts))
                else:
                    events.append(telemetry(device, "platform_extension_mm", rng.randint(-150, 150), ts))
                if i % 3 == 0:
                    events.append(telemetry(device, "battery_charge", round(rng.uniform(10, 100), 1), ts + 1))
                    events.append(telemetry(device, "platform_height_mm", rng.randint(0, 200), ts + 2))
                if rng.random() < 0.08:
                    events.append(rng.choice([{}, {"device_id": device}, {"device_id": device, "value": 123}]))
                    malformed += 1
    return events, malformed


def fill(target: DatabaseTarget) -> Ingested:
    """Good data through the ingest path: two past days of the fleet, ingested on those days, then a
    live hour (ingested now), a replayed batch (duplicates) and one provisioning startup."""
    events, malformed = fleet_events()
    statuses = post(target, [events[i : i + 200] for i in range(0, len(events), 200)])
    # The API stamps ingested_at with its clock; the past days' facts must look ingested on their day,
    # so that each day is a partition of the rollup with data of its own.
    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute("update ingest.processed_record set ingested_at = record_time + interval '2 minutes'")
    now = time.time()
    live = [telemetry(d, "platform_extension_mm", (-1) ** d * 10 * d, now - 60 * d) for d in range(4, 9)]
    live += [telemetry(d, "platform_extension_ticks", 100 * d, now - 60 * d) for d in range(1, 4)]
    later = post(target, [live, events[:20], [startup(SECRET, serial="SN-000007", device_id=7)]])
    for status, count in later.items():
        statuses[status] = statuses.get(status, 0) + count
    assert statuses.get("duplicate", 0) >= 15 and statuses.get("provisioned") == 1, statuses
    return Ingested(telemetry=len(events) + len(live) - malformed, malformed=malformed, statuses=statuses)


@pytest.fixture(scope="module")
def built_db(pg_server: DatabaseTarget, pg_template: DatabaseTarget, tmp_path_factory) -> Iterator[DatabaseTarget]:
    """One database per module, filled through the API, with dbt and Dagster pointed at it.

    Module-scoped because every dbt step costs tens of seconds: the tests of a module share the
    database and run in file order. dbt's target folder is parsed once for this database, so each
    step starts from its partial_parse.msgpack instead of a full parse (the profile differs per test
    database, which defeats the session's manifest preparation).
    """
    from orchestration.defs.dbt.project import dbt_project
    from orchestration.lib.dbt.cli import dbt_cli
    from tests.utils.db import create_fresh_database, drop_database

    target = create_fresh_database(pg_server, prefix="iot_orch")
    dbt_target = tmp_path_factory.mktemp("dbt_target")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in tool_environment(target, base={}).items():
            mp.setenv(key, value)
        mp.setenv("DBT_TARGET", "dev")
        mp.setenv("DBT_TARGET_PATH", str(dbt_target))
        mp.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))
        dbt_cli(dbt_project).cli(["parse", "--quiet"], target_path=dbt_target).wait()
        fill(target)
        yield target
    drop_database(pg_server, target.parts["dbname"])
