"""Buffered-mode fixtures: the machine's NATS (JetStream) server, and a stream prefix per test."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.buffer import NATS_SERVER, SHARED_NATS_URL, OwnedNats, delete_streams, reachable, unique_prefix


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The machine's NATS with JetStream (CI has it); else a nats-server of this session's own."""
    if reachable(SHARED_NATS_URL):
        yield SHARED_NATS_URL
        return
    if not Path(NATS_SERVER).exists():
        pytest.skip(f"no NATS server at {SHARED_NATS_URL} and no nats-server binary to start one")
    root = Path(tempfile.mkdtemp(prefix="iot-nats-"))
    server = OwnedNats(root / "js").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix(nats_url: str) -> Iterator[str]:
    """This test's stream names (`<PREFIX>`, `<PREFIX>_DEAD`) and subjects (`<prefix>.`), deleted after."""
    name = unique_prefix()
    yield name
    delete_streams(nats_url, name)
