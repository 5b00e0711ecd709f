"""Failed device_startup attempts per serial: too many in a window and the serial is refused for a while
(brute-forcing a provision token costs the attacker the window, not us a database round trip)."""

from __future__ import annotations

import time
from collections import deque

from ingest_service.ingest.reasons import Reason

FAILURE_REASONS = frozenset({Reason.INVALID_TOKEN, Reason.STALE_STARTUP})


class FailedStartupLimiter:
    def __init__(self, max_failures: int, window_seconds: float, max_serials: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self.max_serials = max_serials
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, serial: str, now: float) -> deque[float] | None:
        times = self._failures.get(serial)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[serial]
            return None
        return times

    def retry_after(self, serial: str, now: float | None = None) -> float | None:
        """Seconds until this serial may try again, or None when it is not limited."""
        now = time.monotonic() if now is None else now
        times = self._recent(serial, now)
        if times is None or len(times) < self.max_failures:
            return None
        return max(0.0, times[0] + self.window - now)

    def record_failure(self, serial: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if serial not in self._failures and len(self._failures) >= self.max_serials:
            # Bounded memory under a flood of random serials: forget the oldest entry.
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(serial, deque()).append(now)
