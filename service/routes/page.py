"""`/`: the edit page, static HTML, CSS and JavaScript from `service/page/` (no build step, no
CDN). It is a client of the public API like any other: it holds the key the user pastes in
`sessionStorage` and sends it as `Authorization: Bearer`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).resolve().parents[1] / "page"
ASSETS_PATH = "/page"

# Scripts and styles only from this origin, never inline. Audio is fetched from the gateway
# or, with S3 storage, from wherever its presigned URLs point (hence any http(s) connect).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self' http: https:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def edit_page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html",
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


def page_assets() -> StaticFiles:
    """The page's CSS and JavaScript, mounted at `ASSETS_PATH`."""
    return StaticFiles(directory=PAGE_DIR)
