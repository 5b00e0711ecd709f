"""Answer: each item's outcome as the result a door sends back.

Door-neutral: `ItemResult.as_dict()` is the result shape of every door (HTTP, MQTT results topic);
how a door frames it (an HTTP status per result, headers) is the door's own (HTTP:
`ingest_service.api.answers`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ingest_service.ingest.decide import Plan, Provision
from ingest_service.ingest.validation import Rejection, Telemetry

if TYPE_CHECKING:
    from ingest_service.ingest.writer import Written

# The status of a rejection, by reason: every reason not listed is "invalid". A recorded delivery's
# results are rebuilt from the ledger, which keeps the reason of an error (not its status).
STATUS_OF_REASON = {
    "invalid_token": "unauthorized",
    "stale_startup": "unauthorized",
    "too_many_failed_startups": "rate_limited",
    "internal_error": "error",
}
# A fact neither stored nor found as a duplicate: cannot happen while uq_processed_event holds.
LOST_FACT = Rejection("error", "internal_error", "fact neither stored nor found as duplicate")


@dataclass(slots=True)
class ItemResult:
    raw_id: int
    status: str
    processed_id: int | None = None
    reason: str | None = None
    detail: str | None = None
    device_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "raw_id": self.raw_id,
            "processed_id": self.processed_id,
            "status": self.status,
        }
        if self.device_id is not None:
            out["device_id"] = self.device_id
        if self.reason is not None:
            out["reason"] = self.reason
            out["detail"] = self.detail
        return out


@dataclass(slots=True)
class Answer:
    """The write path's answer to one request: a result per item, in input order."""

    results: list[ItemResult]
    # True when the request's delivery key was recorded before: these are the stored results of its
    # first delivery, and nothing new was written.
    replayed: bool = False


def rejected(raw_id: int, rejection: Rejection) -> ItemResult:
    return ItemResult(
        raw_id, rejection.status, reason=rejection.reason, detail=rejection.detail, device_id=rejection.device_id
    )


def results(plans: list[Plan], written: Written) -> list[ItemResult]:
    """The result of each planned item once written, in input order."""
    out: list[ItemResult] = []
    for pos, plan in enumerate(plans):
        raw_id = written.raw_ids[pos]
        if type(plan) is Telemetry:
            fact_id = written.facts.get(raw_id)
            if fact_id is not None:
                out.append(ItemResult(raw_id, "ok", processed_id=fact_id))
            elif raw_id in written.duplicates:
                out.append(ItemResult(raw_id, "duplicate", processed_id=written.duplicates[raw_id]))
            elif raw_id in written.lost:
                out.append(rejected(raw_id, LOST_FACT))
            else:
                raise AssertionError(f"raw row {raw_id} has no outcome")
        elif type(plan) is Provision:
            out.append(ItemResult(raw_id, "provisioned", device_id=written.startup_devices[pos]))
        elif type(plan) is Rejection:
            out.append(rejected(raw_id, plan))
    return out


def recorded(
    rows: Iterable[tuple[int, int | None, int | None, int | None, str | None, str | None, int | None]],
) -> dict[int, ItemResult]:
    """Results rebuilt from the ledger, by raw id. Each row: raw id, its fact, the fact it repeats,
    the device its startup provisioned, and its error's reason, detail and device."""
    out: dict[int, ItemResult] = {}
    for raw_id, fact_id, repeated_id, startup_device, reason, detail, error_device in rows:
        if fact_id is not None:
            out[raw_id] = ItemResult(raw_id, "ok", processed_id=fact_id)
        elif repeated_id is not None:
            out[raw_id] = ItemResult(raw_id, "duplicate", processed_id=repeated_id)
        elif startup_device is not None:
            out[raw_id] = ItemResult(raw_id, "provisioned", device_id=startup_device)
        elif reason is not None:
            status = STATUS_OF_REASON.get(reason, "invalid")
            out[raw_id] = ItemResult(raw_id, status, reason=reason, detail=detail, device_id=error_device)
        else:
            raise AssertionError(f"raw row {raw_id} has no outcome")
    return out
