"""The embedded server's lifecycle commands work against a real pgserver data dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ingest_service.core.config import Settings
from ingest_service.core.database import stop_embedded
from tests.reliability.procs import OwnedPostgres


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stop_embedded_stops_the_server() -> None:
    root = Path(tempfile.mkdtemp(prefix=f"iots-{os.getpid()}-", dir="/tmp"))
    server = OwnedPostgres(root)  # data in root/pg, where Settings(data_dir=root) looks
    try:
        server.start_first()
        settings = Settings(dev_mode=True, data_dir=root)
        assert stop_embedded(settings) is True
        assert not (server.pgdata / "postmaster.pid").exists()
        assert stop_embedded(settings) is False
    finally:
        server.destroy()
