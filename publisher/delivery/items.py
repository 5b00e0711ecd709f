"""What travels through delivery: input lines, and each line's outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Statuses that mean the line needs nothing more from us: the API stored it (ok, duplicate,
# provisioned), or the MQTT broker acknowledged it with a PUBACK (published; the bridge stores it).
# Any other status is a rejection, stored with its reason.
# "accepted": the API runs buffered (INGEST_BUFFER=jetstream): the batch is durable in its stream and
# a writer stores it; the final results are at the receipt.
ACCEPTED_STATUSES = ("ok", "duplicate", "provisioned", "published", "accepted")
INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Line:
    number: int  # 1-based line number in the input, for messages
    raw: bytes  # the line as read, without its line break


# One item's answer: {"status": ..., "raw_id": ..., "reason": ..., ...}, as `POST /ingest` gives it.
Result = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Undelivered:
    """No answer for the line: retries ran out, the input was interrupted, or it can never be sent."""

    reason: str


Outcome = Result | Undelivered


def span(lines: list[Line]) -> str:
    """`7` or `11-20`: the input lines of a batch, for messages."""
    first, last = lines[0].number, lines[-1].number
    return str(first) if first == last else f"{first}-{last}"
