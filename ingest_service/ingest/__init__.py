"""The write path, and the API its doors call.

A door (the HTTP route `POST /ingest` today; the MQTT bridge and the JetStream writer next) is a
thin adapter: it turns what it received into items, hands them to the write path with a
`Delivery` that says where they came from, and renders the answer its own way. No door has its own
validation or SQL.

    from ingest_service.ingest import (
        BodyRejected, DatabaseUnavailable, Delivery, DeliveryKeyReused, IngestService, parse,
    )

    service = IngestService(pool, settings)     # one per process; `await service.start()` / `.stop()`

    parsed = parse(body, content_type, content_encoding,
                   max_inflated_bytes=settings.max_inflated_bytes, max_items=settings.max_batch_items)
    answer = await service.ingest(parsed.items, Delivery(door="mqtt", request_id=..., key=...))
    for result in answer.results:               # one per item, in input order
        result.as_dict()                        # {"raw_id", "processed_id", "status", ...}: the HTTP shape

- `parse(body, content_type, content_encoding, *, max_inflated_bytes, max_items) -> Parsed`
  (`.items`, `.is_batch`): a JSON object, a JSON array or NDJSON (by content type), gzip or not.
  Raises `BodyRejected` (`.reason`, `.detail`) for a body over a limit, in another encoding or
  with corrupt gzip: nothing is stored, the sender keeps it. A body that is not JSON is NOT
  refused: it becomes an item that is stored and answered `invalid`.
- `await service.ingest(items, delivery) -> Answer` (`.results: list[ItemResult]`,
  `.replayed: bool`): returns once every item is committed (acknowledge after this, never before).
  Every item gets a ledger row and exactly one outcome. Raises `DatabaseUnavailable`: nothing of
  the request was stored, retry later (HTTP 503; a broker door does not acknowledge, so the broker
  redelivers). Raises `DeliveryKeyReused`: the key was recorded for a different body, nothing was
  stored (HTTP 422).
- `Delivery(door, request_id, content_type=None, content_encoding=None, remote_addr=None, key=None)`:
  `door` names the door ("http", "mqtt", "jetstream") and is the namespace of `key`; `request_id`
  and the content fields are stored with each ledger row. `key` is the delivery key: the first
  delivery of a key is recorded in the same statement as its ledger rows; a repeat within
  `DELIVERY_KEY_WINDOW_SECONDS` (also while the first is still being written) returns the first
  one's results, `replayed=True`, and writes nothing: no second raw row, no second fact. A broker
  door gives every message a key that is stable across redeliveries (delivery.py).
- `await service.recorded(door, key) -> Answer | None`: the stored results of a recorded key (what
  a receipt resolves to), None while it is not stored.

The stages of one request (docs/architecture.md): parse (body.py) -> admission (admission.py:
the record-type catalog is fresh enough to judge it) -> group commit (groupcommit.py: concurrent
requests share one write) -> decide (decide.py: every outcome, in one place, on the database's
state read by the writer) -> write (writer.py: one statement, or one transaction for startups) ->
answer (answer.py: the results). service.py wires them.
"""

from ingest_service.ingest.admission import DatabaseUnavailable
from ingest_service.ingest.answer import Answer, ItemResult
from ingest_service.ingest.body import BodyItem, BodyRejected, Parsed, parse
from ingest_service.ingest.delivery import Delivery, DeliveryKeyReused
from ingest_service.ingest.service import IngestService

__all__ = [
    "Answer",
    "BodyItem",
    "BodyRejected",
    "DatabaseUnavailable",
    "Delivery",
    "DeliveryKeyReused",
    "IngestService",
    "ItemResult",
    "Parsed",
    "parse",
]
