"""GET / (the page to look at masks) and its two static files.

The page is package data (``app/web/static``): no build step, no CDN, so it works offline.
It stays open when API keys are set, so that a user can type one; every call it makes
goes to the keyed API routes.
"""

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

# Only this origin's scripts, styles and API; blob:/data: for the mask and overlay images.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                 "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                 "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)
_static = StaticFiles(directory=STATIC_DIR)


@router.get("/")
async def page() -> FileResponse:
    """The page: pick, drop or paste an image and look at its mask."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers=_PAGE_HEADERS)


@router.get("/static/{path:path}")
async def static(path: str, request: Request) -> Response:
    """The page's script and stylesheet (ETag/Last-Modified: revalidated, never stale)."""
    response = await _static.get_response(path, request.scope)
    response.headers.update({"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
    return response
