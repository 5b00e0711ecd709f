"""The HTTP stack the ingest API runs in, shared with the benchmark's no-op ceiling."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from bench import noop_app
from ingest_service.core.database import DatabaseTarget
from ingest_service.main import TELEMETRY, create_app
from tests.ingest_service.conftest import make_settings


def _stack(app) -> list[type]:
    return [m.cls for m in app.user_middleware]


def test_noop_ceiling_runs_in_the_api_stack(fresh_db: DatabaseTarget) -> None:
    """The benchmark's HTTP ceiling must measure the API's own stack: same middleware, same telemetry
    settings, routes one router deep like the API's; only the handler differs."""
    api = create_app(make_settings(fresh_db))
    assert _stack(noop_app.app) == _stack(api)
    assert noop_app.app._telemetry == api._telemetry
    assert {key: api._telemetry[key] for key in TELEMETRY} == TELEMETRY
    with TestClient(noop_app.app) as client:
        answer = client.post("/ingest", json={"device_id": 1})
    assert answer.status_code == 200
    assert len(answer.headers["x-request-id"]) == 32


def test_startup_objects_are_frozen_out_of_the_collector(fresh_db: DatabaseTarget) -> None:
    gc.unfreeze()
    with TestClient(create_app(make_settings(fresh_db))) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 0
