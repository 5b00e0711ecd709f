"""Shared route dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ingest_service.core.config import Settings


# async: a plain `def` dependency runs in the thread pool, which costs more than a whole request.
# (The /ingest route reads app state directly instead: docs/performance.md.)
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
