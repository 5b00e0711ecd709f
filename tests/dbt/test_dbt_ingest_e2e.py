"""End to end: a seeded generator-like event list goes through the real ingest path (POST /ingest),
then `dbt build`; every metric must equal its Python computation from the events that were sent."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest_service.core.database import DatabaseTarget
from tests.dbt.events import Scenario, expected, make_scenario
from tests.dbt.helpers import run_dbt
from tests.dbt.metric_checks import CHECKS

pytestmark = [
    pytest.mark.db,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ingest_service.main") is None,
        reason="ingest_service.main (the ingest API) is not written yet; test_dbt_models.py covers the models",
    ),
]

SECRET = "dbt-e2e-provision-secret"
BATCH = 100


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return make_scenario(seed=23, secret=SECRET)


@pytest.fixture(scope="module")
def built_db(
    module_db: DatabaseTarget, scenario: Scenario, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabaseTarget]:
    from fastapi.testclient import TestClient

    from ingest_service.core.config import Settings
    from ingest_service.main import create_app

    settings = Settings(dev_mode=True, database_url=module_db.url, provision_secret=SECRET)
    with TestClient(create_app(settings)) as client:
        for start in range(0, len(scenario.events), BATCH):
            response = client.post("/ingest", json=scenario.events[start : start + BATCH])
            assert response.status_code < 500 and response.status_code != 413, response.text
    dbt_dir = tmp_path_factory.mktemp("dbt_e2e_target")
    as_of = {"metrics_as_of": datetime.fromtimestamp(scenario.as_of, UTC).isoformat()}
    result = run_dbt(module_db, ["build"], dbt_dir, vars=as_of, check=False)
    assert result.returncode == 0, result.stdout[-8000:]
    results: list[dict[str, Any]] = json.loads((Path(dbt_dir) / "run_results.json").read_text())["results"]
    assert all(r["status"] in ("pass", "success") for r in results), [r for r in results if r["status"] != "pass"]
    yield module_db


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_metric_equals_python_computation_after_real_ingest(
    built_db: DatabaseTarget, scenario: Scenario, name: str
) -> None:
    CHECKS[name](built_db, expected(scenario))
