"""Fixtures for the dbt tests: one database and one `dbt build` per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ingest_service.core.database import DatabaseTarget
from tests.utils.db import create_fresh_database, drop_database


@pytest.fixture(scope="module")
def module_db(pg_server: DatabaseTarget, pg_template: DatabaseTarget) -> Iterator[DatabaseTarget]:
    """A migrated, empty database shared by the tests of one module (dbt builds are slow)."""
    target = create_fresh_database(pg_server, prefix="iot_dbt")
    yield target
    drop_database(pg_server, target.parts["dbname"])
