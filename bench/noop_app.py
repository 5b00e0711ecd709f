"""The HTTP ceiling: the ingest API's own HTTP stack (uvicorn + uvloop + httptools with the edge
protocol and options of `ingest_service.core.server`, the FastAPI application and middleware of
`ingest_service.main.http_stack`, same worker count) answering a no-op POST /ingest of the same
body. Not part of the product.

    python -m bench.noop_app --port 8123 --workers 1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import APIRouter, FastAPI, Request, Response

from ingest_service.main import freeze_startup_objects, http_stack


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    freeze_startup_objects()  # as the API does once it has started
    yield


_ANSWER = orjson.dumps({"raw_id": 0, "processed_id": 0, "status": "ok"})
# Routes live in an included router, as the API's do (ingest_service/api/main.py): same matching cost.
router = APIRouter()


@router.post("/ingest")
async def ingest(request: Request) -> Response:
    await request.body()  # read the body like the real route does, then do nothing with it
    return Response(_ANSWER, media_type="application/json")


@router.get("/readyz")
async def readyz() -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")


app = http_stack(title="no-op ingest (benchmark ceiling)", lifespan=lifespan)
app.include_router(router)


def main() -> None:
    import uvicorn

    from ingest_service.core.config import Settings
    from ingest_service.core.server import prepare_server

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "bench.noop_app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        # the API's limits (its environment), without its secret checks: the no-op stores nothing
        **prepare_server(Settings(dev_mode=True), args.workers),
    )


if __name__ == "__main__":
    main()
