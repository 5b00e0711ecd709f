"""The record-type catalog: types are rows in `ingest.record_type`, cached in-process and refreshed,
so registering a new firmware type needs no code change and no restart."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg


@dataclass(slots=True, frozen=True)
class RecordType:
    id: int
    name: str
    unit: str
    min_value: float
    max_value: float
    payload_format: str


class RecordTypeCatalog:
    def __init__(self, types: dict[str, RecordType] | None = None) -> None:
        self._types = types or {}
        self.loaded_at = 0.0

    def get(self, name: str) -> RecordType | None:
        return self._types.get(name)

    def __len__(self) -> int:
        return len(self._types)

    async def refresh(self, conn: psycopg.AsyncConnection) -> None:
        cur = await conn.execute("select id, name, unit, min_value, max_value, payload_format from ingest.record_type")
        self._types = {row[1]: RecordType(*row) for row in await cur.fetchall()}
        self.loaded_at = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.loaded_at
