"""How a request reached the write path, and its delivery key.

A door describes each request (an HTTP POST, an MQTT message, a JetStream message) as a
`Delivery`: which door, the request id stored with every ledger row, and optionally a delivery key.
A key makes the write idempotent per request: the write stage records it in the same statement as
the request's ledger rows (table `ingest.delivery`, migration 0005), and a repeat of the key within
`DELIVERY_KEY_WINDOW_SECONDS` is answered with the stored results and writes nothing, never a
second raw row or fact. The same key with a different body is refused (`DeliveryKeyReused`).

Keys are unique per door: HTTP uses the client's `Idempotency-Key`; a broker door uses the
message's own identity (the JetStream writer: the message id the API published it with).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from ingest_service.ingest.body import BodyItem


@dataclass(slots=True, frozen=True)
class Delivery:
    """One request as a door received it."""

    door: str  # "http", "mqtt", "jetstream": the namespace of `key`
    request_id: str  # stored with each of the request's ledger rows
    content_type: str | None = None
    content_encoding: str | None = None
    remote_addr: str | None = None
    key: str | None = None  # the delivery key: a repeat returns the stored results and writes nothing


class DeliveryKeyReused(Exception):
    """The delivery key was recorded for a different body: nothing was stored."""

    def __init__(self, door: str, key: str) -> None:
        super().__init__(f"the {door} delivery key was already used for a different body; nothing was stored")
        self.door = door
        self.key = key


def fingerprint(items: Sequence[BodyItem]) -> bytes:
    """SHA-256 of what the ledger stores for these items, in order: the same body sent again (also
    with another Content-Encoding) has the same fingerprint."""
    digest = hashlib.sha256()
    for item in items:
        if item.payload is not None:
            part, tag = item.payload.encode(), b"p"
        elif item.body_text is not None:
            part, tag = item.body_text.encode("utf-8", "surrogatepass"), b"t"
        else:
            part, tag = item.body_bytes or b"", b"b"
        digest.update(tag + len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()
