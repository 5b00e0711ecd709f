"""Request and response shapes, for the OpenAPI contract (the route parses bodies itself: a body
that does not match is still stored and answered item by item)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TelemetryEvent(BaseModel):
    device_id: int = Field(ge=1, le=2**63 - 1, description="Legacy ids 1..2^31-1 are created on first sight")
    event_type: str = Field(
        description="A record type name, e.g. platform_extension_mm", examples=["platform_extension_mm"]
    )
    value: float = Field(description="In the record type's native unit (ticks stay ticks)")
    timestamp: float = Field(description="Epoch seconds")


class DeviceStartupEvent(BaseModel):
    event_type: Literal["device_startup"]
    serial: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")
    provision_token: str = Field(description="hex HMAC-SHA256(PROVISION_SECRET, serial)")
    timestamp: float
    firmware: str | None = None
    device_id: int | None = Field(default=None, description="An upgraded legacy device keeps its id")


Event = TelemetryEvent | DeviceStartupEvent


class ItemResultModel(BaseModel):
    raw_id: int | None = Field(description="Ledger row id; null only when nothing was stored")
    processed_id: int | None = Field(description="The fact stored (ok) or repeated (duplicate)")
    status: Literal["ok", "duplicate", "provisioned", "invalid", "unauthorized", "rate_limited", "error"]
    device_id: int | None = Field(default=None, description="For device_startup: the device's id")
    reason: str | None = Field(default=None, description="Stable machine-readable reason code")
    detail: str | None = Field(default=None, description="Human-readable explanation")


class RefusedBody(BaseModel):
    """Nothing was stored: the client keeps the body and retries (or splits it)."""

    raw_id: None = None
    processed_id: None = None
    status: Literal["refused", "error"]
    reason: str
    detail: str
    stored: Literal[False] = False


class Health(BaseModel):
    status: str
    detail: str | None = None


class Readiness(Health):
    buffer: dict[str, int] | None = Field(
        default=None, description="Buffered mode: lag, pending, ack_pending, redelivered and dead_letters messages"
    )
