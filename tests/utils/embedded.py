"""The embedded PostgreSQL a test run uses: started by the first test session that needs it, stopped
by the last one to end, and left alone when something else started it (`make up`, by hand).

The embedded server outlives the process that starts it (ingest_service.core.database), which `make
up` and the CLI rely on; a test run must still leave nothing running. Each session holding the
server has a lease file named by its pid under `<data dir>/pg-test-sessions/`; a marker there says
a test session started the server. Ending a session removes its lease, prunes the leases of dead
sessions, and stops the server when no lease is left and the marker is there. So concurrent
sessions in one worktree share the server, and a session that was killed outright (SIGKILL, no
clean-up at all) is cleaned up after by the next session's end.

Under pytest-xdist only the controller process holds a lease (from configure to unconfigure): its
workers come and go inside that span.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from ingest_service.core.config import Settings
from ingest_service.core.database import embedded_data_dir, start_embedded, stop_embedded

STARTED_BY_TESTS = "started-by-tests"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_is_running(settings: Settings) -> bool:
    from pgserver.utils import PostmasterInfo

    pgdata = embedded_data_dir(settings)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    return info is not None and info.is_running()


class EmbeddedServerLease:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.leases = settings.data_dir / "pg-test-sessions"
        self.marker = self.leases / STARTED_BY_TESTS
        self.mine = self.leases / str(os.getpid())
        self._lock = FileLock(settings.data_dir / "pg-test-sessions.lock")

    def _live_sessions(self) -> list[Path]:
        live = []
        for lease in self.leases.glob("[0-9]*"):
            if _alive(int(lease.name)):
                live.append(lease)
            else:
                lease.unlink(missing_ok=True)  # a session that died without ending
        return live

    def acquire(self) -> None:
        self.leases.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._live_sessions()
            if not server_is_running(self.settings):
                start_embedded(self.settings)
                self.marker.touch()
            # Running already: the marker, if there, says a test session started it (one still running,
            # or one that died, whose server the last lease now ends); without it, `make up` or a
            # person did, and it is never stopped here.
            self.mine.touch()

    def release(self) -> bool:
        """End this session's lease; True when it stopped the server."""
        with self._lock:
            self.mine.unlink(missing_ok=True)
            if self._live_sessions() or not self.marker.exists():
                return False
            self.marker.unlink()
            return stop_embedded(self.settings)
