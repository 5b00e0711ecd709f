"""Suite-wide fixtures: a real PostgreSQL (embedded by default, DATABASE_URL when set)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget
from tests.utils.buffer import NATS_SERVER, SHARED_NATS_URL, OwnedNats, delete_streams, reachable, unique_prefix
from tests.utils.db import build_template, create_fresh_database, drop_database, server_target
from tests.utils.embedded import EmbeddedServerLease

os.environ.setdefault("DEV_MODE", "1")

_EMBEDDED_LEASE = pytest.StashKey[EmbeddedServerLease]()
_SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # pytest then ends the run as on Ctrl-C: sessionfinish, unconfigure


def pytest_configure(config: pytest.Config) -> None:
    """The run's embedded PostgreSQL: held by the controller (or the only process) from here to
    pytest_unconfigure, so it is stopped once, after the last xdist worker, when this run started
    it; also on Ctrl-C, SIGTERM, SIGHUP and failures (tests/utils/embedded.py)."""
    _heed_interrupts()
    if hasattr(config, "workerinput") or os.environ.get("DATABASE_URL"):
        return
    if config.getoption("collectonly", False) or config.getoption("help", False):
        return
    lease = EmbeddedServerLease(Settings(dev_mode=True))
    lease.acquire()
    config.stash[_EMBEDDED_LEASE] = lease
    if threading.current_thread() is threading.main_thread():
        for signum in _SHUTDOWN_SIGNALS:
            signal.signal(signum, _interrupt)


def _heed_interrupts() -> None:
    """Every process of the run (controller and workers) starts as from a terminal. A run started in
    the background of a shell without job control has SIGINT ignored, Dagster's in-process runs then
    give SIGTERM the same disposition, and every process a later test starts would ignore both: no
    stop of ours could stop it (`nohup make test &`, a CI step without a terminal)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_unconfigure(config: pytest.Config) -> None:
    lease = config.stash.get(_EMBEDDED_LEASE, None)
    if lease is None:
        return
    if threading.current_thread() is threading.main_thread():
        # A second Ctrl-C or SIGTERM must not abandon the stop half-way.
        for signum in (signal.SIGINT, *_SHUTDOWN_SIGNALS):
            signal.signal(signum, signal.SIG_IGN)
    lease.release()


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


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's NATS with JetStream (CI has it); else a nats-server of this session's own."""
    if reachable(SHARED_NATS_URL):
        yield SHARED_NATS_URL
        return
    if not Path(NATS_SERVER).exists():
        pytest.skip(f"no NATS server at {SHARED_NATS_URL} and no nats-server binary to start one")
    server = OwnedNats(tmp_path_factory.mktemp("nats") / "js").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def prefix(nats_url: str) -> Iterator[str]:
    """This test's stream names (`<PREFIX>`, `<PREFIX>_DEAD`) and subjects (`<prefix>.*`), deleted after."""
    name = unique_prefix()
    yield name
    delete_streams(nats_url, name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that touch PostgreSQL are marked `db`: CI reruns them against PostgreSQL 15."""
    for item in items:
        if "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)
