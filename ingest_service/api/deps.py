"""Shared route dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ingest_service.core.config import Settings
from ingest_service.ingest.service import IngestService


# async: a plain `def` dependency runs in the thread pool, which costs more than the whole write
# path of a single event (measured in docs/performance.md).
async def get_service(request: Request) -> IngestService:
    return request.app.state.service


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[IngestService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
