"""Pace a stream of events to a rate, for the generator's stdout and the simulator's deliveries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def paced(items: Iterable[T], count: int | None, rate: float, stop: threading.Event | None = None) -> Iterator[T]:
    """The first `count` items (all when None) at `rate` per second (0: unpaced), until `stop` is set."""
    interval = 1.0 / rate if rate > 0 else 0.0
    stop = stop or threading.Event()
    # Pace against a schedule, not sleep(interval) after each item, so a slow consumer doesn't lower the rate.
    deadline = time.monotonic()
    for taken, item in enumerate(items):
        if (count is not None and taken >= count) or stop.is_set():
            return
        if interval:
            delay = deadline - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            deadline = max(deadline + interval, time.monotonic() - interval)
        yield item
