"""Suite-wide fixtures: a real PostgreSQL (embedded by default, DATABASE_URL when set)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ingest_service.core.database import DatabaseTarget
from tests.utils.db import build_template, create_fresh_database, drop_database, server_target

os.environ.setdefault("DEV_MODE", "1")


@pytest.fixture(scope="session")
def pg_server() -> DatabaseTarget:
    """The PostgreSQL server under test (its `postgres` maintenance database)."""
    return server_target()


@pytest.fixture(scope="session")
def pg_template(pg_server: DatabaseTarget) -> Iterator[DatabaseTarget]:
    """The migrated template every fresh test database is copied from."""
    template = build_template(pg_server)
    yield template
    drop_database(pg_server, template.parts["dbname"])


@pytest.fixture
def fresh_db(pg_server: DatabaseTarget, pg_template: DatabaseTarget) -> Iterator[DatabaseTarget]:
    """A migrated, empty database of its own for one test."""
    target = create_fresh_database(pg_server)
    yield target
    drop_database(pg_server, target.parts["dbname"])


@pytest.fixture(scope="module")
def module_db(pg_server: DatabaseTarget, pg_template: DatabaseTarget) -> Iterator[DatabaseTarget]:
    """A migrated, empty database shared by the tests of one module (for slow set-ups: dbt builds, corpora)."""
    target = create_fresh_database(pg_server)
    yield target
    drop_database(pg_server, target.parts["dbname"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that touch PostgreSQL are marked `db`: CI reruns them against PostgreSQL 15."""
    for item in items:
        if "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)
