"""One database for the analytics tests: filled through the real ingest path, then built by dbt.

Building takes a dbt run, so the database is shared by the package's tests (they only read it). The
API under test reads the manifest of that build (DBT_MANIFEST_PATH), as it reads
dbt_project/target/manifest.json in `make up`.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml
from fastapi.testclient import TestClient

from ingest_service.analytics.catalog import Catalog, load_catalog
from ingest_service.core.config import PROJECT_ROOT, Settings
from ingest_service.core.database import DatabaseTarget, tool_environment
from ingest_service.main import create_app
from tests.utils.db import create_fresh_database, drop_database

API_KEY = "analytics-test-key-0123456789abcdef0123"  # 32+ bytes: a key `serve` accepts
ANALYST = "iot_analyst"
DBT = PROJECT_ROOT / ".venv" / "bin" / "dbt"
DBT_PROJECT = PROJECT_ROOT / "dbt_project"
NO_MANIFEST = PROJECT_ROOT / ".data" / "no-such-dir" / "manifest.json"


def served_models() -> list[str]:
    """The marts whose YAML has a `meta.analytics` block (for parametrising tests at collection time;
    test_catalog checks that the manifest's catalog serves exactly these)."""
    names = []
    for path in sorted((DBT_PROJECT / "models").rglob("*.yml")):
        for model in yaml.safe_load(path.read_text()).get("models", []):
            if "analytics" in model.get("config", {}).get("meta", {}):
                names.append(model["name"])
    return sorted(names)


@dataclass(frozen=True)
class AnalyticsDb:
    target: DatabaseTarget
    sent: list[dict]  # every event POSTed
    manifest: Path  # of the dbt build that built it

    @property
    def catalog(self) -> Catalog:
        return load_catalog(self.manifest)


def analytics_settings(target: DatabaseTarget, manifest: Path = NO_MANIFEST, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "dev_mode": True,
        "database_url": target.url,
        "analytics_api_key": API_KEY,
        "group_commit_window_ms": 0.5,
        "dbt_manifest_path": manifest,
    }
    values.update(overrides)
    return Settings(**values)


def make_events(now: float) -> list[dict]:
    """A fleet mid-rollout over three UTC days: legacy-only, new-only and migrated devices, battery and
    height readings, side switches in the last hour, and some malformed items."""
    hour = 3600.0
    events: list[dict] = []

    def ext(device: int, kind: str, value: float, at: float) -> None:
        events.append({"device_id": device, "event_type": kind, "value": value, "timestamp": at})

    start = now - 60 * hour  # 55 h of data: at least three UTC days
    for device in range(1, 9):
        for step in range(12):
            at = start + step * 5 * hour + device * 7.0
            if device <= 3:  # legacy only
                ext(device, "platform_extension_ticks", (device * 137 + step * 211) % 3000, at)
            elif device <= 5:  # new only, swinging left and right
                ext(device, "platform_extension_mm", (-1) ** step * (10 + device + step), at)
            else:  # migrated half-way
                if step < 6:
                    ext(device, "platform_extension_ticks", 100 + 50 * step, at)
                else:
                    ext(device, "platform_extension_mm", [-20, 0, 15, -5, 30, -30][step - 6], at)
            ext(device, "battery_charge", 100 - step * 3.5 - device, at + 1)
            ext(device, "platform_height_mm", (device * 13 + step * 7) % 200, at + 2)
    # The last hour: side switches for devices 4 and 6 (zero in between is ignored).
    for i, value in enumerate([12, -3, 0, 8, -9, 0, 0, 4]):
        ext(4, "platform_extension_mm", value, now - 50 * 60 + i * 60)
    for i, value in enumerate([-40, 40, -40]):
        ext(6, "platform_extension_mm", value, now - 30 * 60 + i * 60)
    # Malformed items (stored as errors with a reason): enough reasons that the error-rate chart has
    # more bars than its default height can label.
    events += [
        {},
        {"device_id": 1, "event_type": "platform_extension_ticks", "value": "high", "timestamp": now - 100},
        {"device_id": 2, "event_type": "platform_extension_mm", "value": 999, "timestamp": now - 100},
        {"device_id": 3, "event_type": "warp_drive", "value": 1, "timestamp": now - 100},
        {"device_id": 5, "event_type": "platform_extension_mm", "timestamp": now - 100},
        {"device_id": 6, "event_type": "battery_charge", "value": 50, "timestamp": 86_400.0},
        {"device_id": 6, "event_type": "battery_charge", "value": 50, "timestamp": now + 86_400},
        {"device_id": 0, "event_type": "platform_height_mm", "value": 5, "timestamp": now - 100},
        {"device_id": 2**31 + 5, "event_type": "platform_extension_mm", "value": 5, "timestamp": now - 100},
        {"event_type": "device_startup", "serial": "not a serial!", "provision_token": "00", "timestamp": now},
        {"event_type": "device_startup", "serial": "SN-000404", "provision_token": "00" * 32, "timestamp": now},
        7,
    ]
    assert all(math.isfinite(e.get("timestamp", 0)) for e in events if isinstance(e, dict))
    return events


def run_dbt(target: DatabaseTarget, work: Path, *args: str, project: Path = DBT_PROJECT) -> subprocess.CompletedProcess:
    """dbt in `project` against `target`, its target folder (manifest.json...) under `work`."""
    return subprocess.run(
        [
            str(DBT),
            *args,
            "--project-dir",
            str(project),
            "--profiles-dir",
            str(DBT_PROJECT),
            "--target-path",
            str(work / "target"),
            "--log-path",
            str(work / "logs"),
        ],
        env=tool_environment(target),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="package")
def analytics_db(
    pg_server: DatabaseTarget, pg_template: DatabaseTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AnalyticsDb]:
    target = create_fresh_database(pg_server, prefix="iot_analytics")
    try:
        events = make_events(time.time())
        with TestClient(create_app(analytics_settings(target))) as client:
            for i in range(0, len(events), 100):
                response = client.post("/ingest", json=events[i : i + 100])
                assert response.status_code == 200, response.text
        work = tmp_path_factory.mktemp("dbt")
        # The models and seeds only: dbt's data and unit tests are the dbt project's own suite (and an
        # incremental model's unit test needs the model built once before).
        result = run_dbt(
            target, work, "build", "--exclude-resource-type", "test", "--exclude-resource-type", "unit_test"
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        yield AnalyticsDb(target, events, work / "target" / "manifest.json")
    finally:
        drop_database(pg_server, target.parts["dbname"])


@pytest.fixture(scope="package")
def api(analytics_db: AnalyticsDb) -> Iterator[TestClient]:
    """The app against the built database; requests carry the key unless a test overrides the header."""
    app = create_app(analytics_settings(analytics_db.target, analytics_db.manifest))
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture
def db(analytics_db: AnalyticsDb) -> Iterator[psycopg.Connection]:
    """A direct (owner) connection to read the dbt models as they are."""
    with psycopg.connect(analytics_db.target.url, autocommit=True) as conn:
        yield conn
