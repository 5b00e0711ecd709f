"""MQTT door fixtures: the machine's Mosquitto (127.0.0.1:1883, or MQTT_TEST_URL) shared by the
suite, a unique topic prefix and client ids per test so parallel runs never see each other's
messages, and Mosquittos a test starts itself (deploy/mosquitto config) when it needs logins or
durable queues of its own."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.mosquitto import OwnedMosquitto

SYSTEM_BROKER = os.environ.get("MQTT_TEST_URL", "mqtt://127.0.0.1:1883")


@pytest.fixture(scope="session")
def system_broker() -> str:
    parts = urlsplit(SYSTEM_BROKER)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 1883), timeout=2):
            pass
    except OSError as exc:
        pytest.fail(f"the MQTT tests need Mosquitto at {SYSTEM_BROKER} (apt-get install mosquitto): {exc}")
    return SYSTEM_BROKER


@pytest.fixture
def prefix() -> str:
    """A topic prefix (MQTT_TOPIC_PREFIX) of this test alone; also the stem of its client ids."""
    return f"iot-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def broker_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="iotmq-", dir="/tmp"))
    yield root
    import shutil

    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def owned_broker(broker_root: Path, prefix: str) -> Iterator[OwnedMosquitto]:
    """Mosquitto with the shipped config, anonymous: durable queues of the test's own."""
    broker = OwnedMosquitto(broker_root, prefix).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def owned_pg():
    """A PostgreSQL this module owns and may stop (tests/reliability/procs.py): never the suite's."""
    from tests.reliability.procs import OwnedPostgres

    root = Path(tempfile.mkdtemp(prefix=f"iotmf-{os.getpid()}-", dir="/tmp"))
    server = OwnedPostgres(root)
    try:
        server.start_first()
        yield server
    finally:
        server.destroy()
