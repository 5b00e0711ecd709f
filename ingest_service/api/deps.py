"""Shared route dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ingest_service.core.config import Settings
from ingest_service.ingest.service import IngestService


def get_service(request: Request) -> IngestService:
    return request.app.state.service


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[IngestService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
