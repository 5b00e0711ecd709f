"""The lifecycle commands' work, as plain functions of the settings (the CLI only parses and prints)."""

from __future__ import annotations

from datetime import date

import psycopg

from ingest_service.core.config import Settings
from ingest_service.core.database import DatabaseTarget
from ingest_service.lifecycle import archive, partitions


def run_archive(target: DatabaseTarget, settings: Settings, on: date | None = None) -> list[archive.DayResult]:
    with psycopg.connect(target.url, autocommit=True) as conn:
        return archive.archive(conn, settings.resolved_archive_url, settings.retention_days, on)


def run_restore(target: DatabaseTarget, settings: Settings, day: str) -> archive.DayResult:
    with psycopg.connect(target.url, autocommit=True) as conn:
        return archive.restore(conn, settings.resolved_archive_url, partitions.parse_day(day))
