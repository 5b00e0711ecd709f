"""The analytics dashboard: a static page whose script reads the /analytics/ routes.

The page and its assets carry no data and need no key; the script sends the analytics key (from
`/dashboard?key=...`, kept in sessionStorage, or typed into its key field) with every request.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import FileResponse

STATIC_DIR = FsPath(__file__).resolve().parents[2] / "static"

# The only files served: name -> (path under static/, media type).
ASSETS: dict[str, tuple[str, str]] = {
    "dashboard.js": ("dashboard/dashboard.js", "text/javascript; charset=utf-8"),
    "dashboard.css": ("dashboard/dashboard.css", "text/css; charset=utf-8"),
    "chart.umd.min.js": ("vendor/chartjs/chart.umd.min.js", "text/javascript; charset=utf-8"),
    "chart.js.LICENSE.md": ("vendor/chartjs/LICENSE.md", "text/markdown; charset=utf-8"),
}
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(prefix="/dashboard", tags=["dashboard"])


@router.get("", response_class=FileResponse, summary="The analytics dashboard page")
async def dashboard() -> FileResponse:
    """Rollout at a glance, metric tables, error rate by reason and the example queries, as of the last dbt
    build (the page shows each new build; before the first, when it is due)."""
    return FileResponse(
        STATIC_DIR / "dashboard" / "index.html", media_type="text/html; charset=utf-8", headers=NO_CACHE
    )


@router.get("/assets/{name}", response_class=FileResponse, summary="Dashboard script, style and chart library")
async def asset(name: Annotated[str, Path(description="One of the dashboard's files")]) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(status_code=404, detail=f"no dashboard asset named {name[:80]!r}")
    relative, media_type = ASSETS[name]
    return FileResponse(STATIC_DIR / relative, media_type=media_type, headers=NO_CACHE)
