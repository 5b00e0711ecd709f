from fastapi import APIRouter

from ingest_service.api.routes import health, ingest

api_router = APIRouter()
api_router.include_router(ingest.router)
api_router.include_router(health.router)
