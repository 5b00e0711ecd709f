from fastapi import APIRouter

from ingest_service.api.routes import analytics, dashboard, health, ingest, receipts

# Included one by one into the application (not through one aggregate router): every level of
# router nesting costs each request ~10 us of route matching in FastAPI, and /ingest is hot.
ROUTERS: tuple[APIRouter, ...] = (ingest.router, receipts.router, health.router, analytics.router, dashboard.router)
