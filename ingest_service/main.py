"""The ingest API application."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from ingest_service.analytics.catalog import ManifestCatalog
from ingest_service.analytics.reader import (
    AnalyticsReader,
    AnalyticsUnavailable,
    analytics_error_response,
    analytics_url,
)
from ingest_service.api.main import ROUTERS
from ingest_service.api.routes.analytics import install_metric_routes
from ingest_service.api.schemas import DeviceStartupEvent, TelemetryEvent
from ingest_service.api.security_headers import SecurityHeadersMiddleware
from ingest_service.buffer.publisher import BufferPublisher
from ingest_service.core.config import Settings, get_settings
from ingest_service.core.database import resolve_target, write_pool
from ingest_service.core.logging import RequestIdMiddleware
from ingest_service.ingest.service import IngestService

# The service exports Prometheus metrics (/metrics), not OpenTelemetry: FastAPI's native OTel hook
# would otherwise look up the global providers (environment reads) on every request.
TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def http_stack(**kwargs: Any) -> FastAPI:
    """The FastAPI application and middleware every route runs in, without routes. The ingest
    benchmark's no-op ceiling is built on it too, so both measure the same stack."""
    # No /redoc: the OpenAPI pages are /docs (Swagger UI, under its own Content-Security-Policy) and
    # /openapi.json.
    app = FastAPI(generate_unique_id_function=_unique_id, telemetry=TELEMETRY, redoc_url=None, **kwargs)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(SecurityHeadersMiddleware, docs_path=app.docs_url or "/docs")
    return app


def freeze_startup_objects() -> None:
    """Everything allocated during startup lives as long as the process: move it out of the
    collector's sight, so full collections (which would otherwise rescan it) stay short and rare."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        target = resolve_target(settings)
        pool = write_pool(settings, target.url, "ingest_service")
        await pool.open(wait=False)
        service = IngestService(pool, settings)
        await service.start()
        # Analytics reads through a pool of its own, as the read-only analyst role (docs/analytics.md).
        analytics = AnalyticsReader(settings, analytics_url(settings, target))
        await analytics.open()
        app.state.pool, app.state.service, app.state.analytics = pool, service, analytics
        # Buffered mode: POST /ingest publishes to JetStream, `iot-platform writer` stores (docs/scaling.md).
        if settings.ingest_buffer == "jetstream":
            app.state.buffer = BufferPublisher(settings)
            await app.state.buffer.start()
        # The analytics model routes follow the dbt manifest: a build that rewrites it swaps them.
        watcher = asyncio.create_task(catalog.watch(partial(install_metric_routes, app)))
        freeze_startup_objects()
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if app.state.buffer is not None:
                await app.state.buffer.close()
            await analytics.close()
            await service.stop()
            await pool.close()

    app = http_stack(
        title="IoT telemetry ingest API",
        description="Devices POST telemetry and device_startup events; every body lands in an immutable ledger.",
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.buffer = None
    for router in ROUTERS:
        app.include_router(router)
    # One route per dbt model with `meta.analytics` (none while dbt has not parsed the project yet).
    catalog = ManifestCatalog(settings.dbt_manifest_path)
    catalog.refresh()
    install_metric_routes(app, catalog.catalog)
    app.state.analytics_catalog = catalog
    app.add_exception_handler(AnalyticsUnavailable, analytics_error_response)  # type: ignore[arg-type]
    _add_event_schemas(app)
    return app


def _add_event_schemas(app: FastAPI) -> None:
    """The /ingest body is parsed by hand (bad bodies are stored, not refused), so its event
    schemas are added to the OpenAPI components explicitly."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (TelemetryEvent, DeviceStartupEvent):
                components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_factory() -> FastAPI:
    """uvicorn --factory entry point."""
    return create_app()
