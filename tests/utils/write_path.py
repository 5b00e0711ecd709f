"""Driving the write path's stages directly, on a real database."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg

from ingest_service.ingest import Delivery, parse
from ingest_service.ingest.catalog import RecordTypeCatalog
from ingest_service.ingest.decide import Rules
from ingest_service.ingest.delivery import fingerprint
from ingest_service.ingest.writer import Request, Writer

SECRET = "s"


class CountingConnection:
    """A real connection that records the statements sent through it, and its transactions."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.queries: list[str] = []
        self.transactions = 0

    async def execute(self, query: Any, params: Any = None) -> Any:
        self.queries.append(" ".join(str(query).split())[:40])
        return await self.conn.execute(query, params)

    def transaction(self) -> Any:
        self.transactions += 1
        return self.conn.transaction()


def rules(catalog: RecordTypeCatalog, **overrides: Any) -> Rules:
    values: dict[str, Any] = {
        "catalog": catalog,
        "secret": SECRET,
        "max_clock_skew": 60.0,
        "replay_window": 60.0,
        "failures_per_serial": 5,
        "failure_window": 60.0,
    }
    values.update(overrides)
    return Rules(**values)


async def load_catalog(conn: psycopg.AsyncConnection[Any]) -> RecordTypeCatalog:
    catalog = RecordTypeCatalog()
    await catalog.refresh(conn)
    return catalog


async def writer_for(conn: psycopg.AsyncConnection[Any], **overrides: Any) -> Writer:
    return Writer(rules(await load_catalog(conn), **overrides), delivery_key_window=3600.0)


def request(events: Any, request_id: str = "req", key: str | None = None, door: str = "test") -> Request:
    """A request of a JSON body (an array is a batch), as a door hands it over."""
    body = events if isinstance(events, bytes) else orjson.dumps(events)
    items = parse(body, "application/json", None, max_inflated_bytes=1 << 26, max_items=100_000).items
    delivery = Delivery(door, request_id, "application/json", None, "127.0.0.1", key)
    return Request(items, delivery, fingerprint(items) if key is not None else None)
