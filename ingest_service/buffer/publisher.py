"""The API side of buffered ingest: publish a checked body to the stream, answer its receipt.

A request is acknowledged (202) only after JetStream's publish acknowledgement, which the stream
sends once the message is stored (on every replica in a cluster). The receipt is the request id
and the message's stream sequence: `js-<32 hex>-<seq>`, so a receipt can be checked against the
stream (an unknown receipt is a 404, never "accepted" forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from ingest_service.buffer import door
from ingest_service.buffer.stream import API_TIMEOUT_SECONDS, BufferNames, BufferState, BufferUnavailable, buffer_state
from ingest_service.buffer.stream import connect as connect_nats
from ingest_service.core.config import Settings

log = logging.getLogger(__name__)
# Room for the headers NATS adds to ours (the publish subject and reply inbox travel outside the payload).
HEADER_ALLOWANCE = 1024


class BufferRefused(BufferUnavailable):
    """The stream refused the request (503): `reason` says why, in the product's words."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Receipt:
    receipt: str
    request_id: str
    seq: int
    items: int


def receipt_id(request_id: str, seq: int) -> str:
    return f"{request_id}-{seq}"


def parse_receipt(receipt: str) -> tuple[str, int] | None:
    request_id, _, seq = receipt.rpartition("-")
    if not door.is_request_id(request_id) or not seq.isdigit() or len(seq) > 20:
        return None
    return request_id, int(seq)


class BufferPublisher:
    """One per API process: its NATS connection, opened in the background so the API starts (and
    answers 503) while NATS is down."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = BufferNames.of(settings)
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._connecting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect(), name="nats-connect")

    async def _connect(self) -> None:
        self.nc = await connect_nats(self.settings, "ingest-api")
        self.js = self.nc.jetstream(timeout=API_TIMEOUT_SECONDS)

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    def jetstream(self) -> JetStreamContext:
        if self.js is None or self.nc is None or not self.nc.is_connected:
            raise BufferRefused(
                "buffer_unavailable", "the buffer (NATS) is unreachable; nothing was stored, retry later"
            )
        return self.js

    async def publish(self, body: bytes, delivery: door.Delivery, items: list[door.BodyItem]) -> Receipt:
        """Publish the body as received; returns once the stream has stored it.

        The publish is retried with the same Nats-Msg-Id while the deadline allows: the stream keeps
        one copy of a request id within its duplicate window, so a lost acknowledgement costs no
        second message.
        """
        js = self.jetstream()
        assert self.nc is not None
        limit = self.nc.max_payload - HEADER_ALLOWANCE
        if len(body) > limit:
            raise door.BodyRejected(
                "body_too_large",
                f"body of {len(body)} bytes exceeds the buffer's {limit}-byte message limit; split it or send it gzip",
            )
        request_id = door.request_id_for(delivery.key)
        headers = door.message_headers(request_id, delivery, time.time())
        subject = self.names.request_subject(door.partition_key(items))
        timeout = self.settings.ingest_buffer_publish_timeout_seconds
        deadline = time.monotonic() + timeout
        while True:
            try:
                ack = await js.publish(
                    subject, body, timeout=timeout / 2, stream=self.names.stream, headers=dict(headers)
                )
                return Receipt(receipt_id(request_id, ack.seq), request_id, ack.seq, len(items))
            except TimeoutError:  # nats-py's own TimeoutError is one too
                if time.monotonic() + timeout / 2 > deadline:
                    raise BufferRefused(
                        "buffer_unavailable", "the buffer did not acknowledge in time; retry later"
                    ) from None
            except nats.js.errors.NoStreamResponseError:
                raise BufferRefused(
                    "buffer_unavailable", "no stream takes the request (is it created?); retry later"
                ) from None
            except nats.js.errors.APIError as exc:
                full = "maximum" in (exc.description or "")  # "maximum bytes exceeded", "maximum messages exceeded"
                log.warning("JetStream refused a publish: %s", exc.description)
                reason = "buffer_full" if full else "buffer_unavailable"
                raise BufferRefused(reason, "the buffer refused the request; retry later") from None
            except (nats.errors.Error, OSError) as exc:  # connection closed, reconnecting, ...
                log.warning("publish failed: %s", type(exc).__name__)
                raise BufferRefused("buffer_unavailable", "the buffer (NATS) is unreachable; retry later") from None

    async def state(self) -> BufferState:
        return await buffer_state(self.jetstream(), self.names)
