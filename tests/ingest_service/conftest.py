from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget
from ingest_service.main import create_app

# Outside dev mode (as these settings are) a secret must be at least 32 bytes.
SECRET = "test-provision-secret-of-32-bytes-or-more"


def make_settings(target: DatabaseTarget, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "dev_mode": False,
        "database_url": target.url,
        "provision_secret": SECRET,
        "group_commit_window_ms": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def client(fresh_db: DatabaseTarget) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(fresh_db))) as test_client:
        yield test_client


@pytest.fixture
def db(fresh_db: DatabaseTarget) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_db.url, autocommit=True) as conn:
        yield conn
