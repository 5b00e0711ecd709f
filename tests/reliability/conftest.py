from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.procs import OwnedPostgres


@pytest.fixture(scope="module")
def owned_pg() -> Iterator[OwnedPostgres]:
    """A PostgreSQL server this module owns (and may crash): never the suite's shared server.

    A short path under /tmp: the unix socket path must stay under ~100 characters.
    """
    root = Path(tempfile.mkdtemp(prefix=f"iotf-{os.getpid()}-", dir="/tmp"))
    server = OwnedPostgres(root)
    try:
        server.start_first()
        yield server
    finally:
        server.destroy()
