"""Dependencies of the analytics routes: the reader, the catalog of served models, the bearer-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ingest_service.analytics.catalog import Catalog, ManifestCatalog
from ingest_service.analytics.reader import AnalyticsReader, AnalyticsUnavailable, not_built
from ingest_service.api.deps import SettingsDep

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AnalyticsKey",
    description="ANALYTICS_API_KEY, sent as `Authorization: Bearer <key>`",
)


async def get_reader(request: Request) -> AnalyticsReader:
    return request.app.state.analytics


async def get_manifest_catalog(request: Request) -> ManifestCatalog:
    return request.app.state.analytics_catalog


ManifestCatalogDep = Annotated[ManifestCatalog, Depends(get_manifest_catalog)]


async def get_catalog(settings: SettingsDep, source: ManifestCatalogDep) -> Catalog:
    """The served models; 503 `analytics_not_built` while no dbt manifest exists on this host."""
    if source.catalog is None:
        raise not_built(settings, "The analytics models are")
    return source.catalog


async def require_analytics_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """401 unless the bearer token equals ANALYTICS_API_KEY (constant-time). Without a key configured,
    dev mode is open and production refuses every analytics request (503)."""
    expected = settings.analytics_api_key
    if expected is None:
        if settings.dev_mode:
            return
        raise AnalyticsUnavailable(
            "analytics_not_configured",
            "ANALYTICS_API_KEY is not set: the analytics routes are closed until it is (DEV_MODE=1 opens them)",
        )
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        reason = "missing" if credentials is None else "wrong"
        raise AnalyticsUnavailable(
            "unauthorized",
            f"{reason} analytics key: send `Authorization: Bearer <ANALYTICS_API_KEY>`",
            status_code=401,
        )


ReaderDep = Annotated[AnalyticsReader, Depends(get_reader)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
AnalyticsAuth = Depends(require_analytics_key)
