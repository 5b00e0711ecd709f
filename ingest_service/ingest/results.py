"""What the API answers per item, and the request-level context stored with each ledger row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest_service.ingest.body import BodyItem
from ingest_service.ingest.validation import Outcome

# HTTP status of a single-item request, by item status.
SINGLE_ITEM_HTTP_STATUS = {
    "ok": 200,
    "duplicate": 200,
    "provisioned": 200,
    "invalid": 422,
    "unauthorized": 401,
    "rate_limited": 429,
    "error": 500,
}


@dataclass(slots=True, frozen=True)
class RequestMeta:
    request_id: str
    content_type: str | None
    content_encoding: str | None
    remote_addr: str | None


@dataclass(slots=True)
class PendingItem:
    meta: RequestMeta
    batch_index: int
    body: BodyItem
    outcome: Outcome


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
