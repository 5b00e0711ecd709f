from fastapi import APIRouter

from ingest_service.api.routes import analytics, dashboard, health, ingest

api_router = APIRouter()
api_router.include_router(ingest.router)
api_router.include_router(health.router)
api_router.include_router(analytics.router)
api_router.include_router(dashboard.router)
