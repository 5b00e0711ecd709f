"""Counts per status and reason, shared by the senders (requests, retries) and the ordered accounting."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from publisher.delivery.items import ACCEPTED_STATUSES, Outcome, Undelivered


class Tally:
    """Counters shared by the workers (retries) and the ordered accounting (outcomes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.sent = 0
        self.requests = 0
        self.retried = 0
        self.retried_events = 0
        self.splits = 0
        self.by_status: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()
        self.undelivered_by_reason: Counter[str] = Counter()
        self.skipped_blank = 0

    def add_sent(self, n: int) -> None:
        with self.lock:
            self.sent += n

    def add_request(self) -> None:
        with self.lock:
            self.requests += 1

    def add_retry(self, n_events: int) -> None:
        with self.lock:
            self.retried += 1
            self.retried_events += n_events

    def add_split(self) -> None:
        with self.lock:
            self.splits += 1

    def add_skipped_blank(self) -> None:
        with self.lock:
            self.skipped_blank += 1

    def record(self, outcome: Outcome) -> None:
        with self.lock:
            if isinstance(outcome, Undelivered):
                self.undelivered_by_reason[outcome.reason] += 1
                return
            status = outcome["status"]
            self.by_status[status] += 1
            if status not in ACCEPTED_STATUSES:
                self.rejected_by_reason[str(outcome.get("reason") or status)] += 1

    @property
    def accepted(self) -> int:
        return sum(self.by_status[s] for s in ACCEPTED_STATUSES)

    @property
    def rejected(self) -> int:
        return sum(n for s, n in self.by_status.items() if s not in ACCEPTED_STATUSES)

    @property
    def undelivered(self) -> int:
        return sum(self.undelivered_by_reason.values())

    def summary(self) -> dict[str, Any]:
        with self.lock:
            elapsed = time.monotonic() - self.started
            return {
                "sent": self.sent,
                "accepted": self.accepted,
                "rejected": self.rejected,
                "undelivered": self.undelivered,
                "retried": self.retried,
                "retried_events": self.retried_events,
                "requests": self.requests,
                "splits": self.splits,
                "skipped_blank": self.skipped_blank,
                "by_status": dict(sorted(self.by_status.items())),
                "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
                "undelivered_by_reason": dict(sorted(self.undelivered_by_reason.items())),
                "elapsed_seconds": round(elapsed, 3),
            }


def format_summary(summary: dict[str, Any]) -> str:
    statuses = ", ".join(f"{status} {n}" for status, n in summary["by_status"].items()) or "none"
    text = (
        f"sent {summary['sent']}, accepted {summary['accepted']}, rejected {summary['rejected']}, "
        f"undelivered {summary['undelivered']}, retried {summary['retried']} "
        f"({summary['requests']} requests, {summary['splits']} splits) in {summary['elapsed_seconds']}s; "
        f"by status: {statuses}"
    )
    if summary["rejected_by_reason"]:
        text += "; rejected by reason: " + ", ".join(f"{r} {n}" for r, n in summary["rejected_by_reason"].items())
    if summary["undelivered_by_reason"]:
        text += "; undelivered: " + ", ".join(f"{r} {n}" for r, n in summary["undelivered_by_reason"].items())
    return text
