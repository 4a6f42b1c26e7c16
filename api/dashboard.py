"""The dashboard: one HTML page at ``/`` and its static assets at ``/static/...``.

The page is a plain-JavaScript client of the ``/v1`` API (ES modules, no build step); every
script, style and chart library is served from ``api/static`` so that it works with no network.
The page itself holds no secrets: the browser signs in with an API key kept in
``sessionStorage`` and sends it as a bearer token, like any other API client.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Module scripts are refused by browsers unless served with a JavaScript type, and the
# platform's mimetypes table is not guaranteed to know every suffix we ship.
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# Everything comes from this origin: the policy doubles as a guard that nothing is loaded
# from a CDN. Chart.js sets inline style attributes on its canvases, hence 'unsafe-inline'
# for styles only.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)

# The assets change with every deployment and are small; revalidating (ETag) keeps a new
# release from meeting an old cached script.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def static_file(relative: str) -> Path:
    """Resolve ``relative`` inside ``STATIC_DIR``; refusing ``..`` and absolute paths.

    Raises ``HTTPException(404)`` for anything that is not a regular file under the folder.
    """
    root = STATIC_DIR
    if "\x00" in relative:  # no file name holds one, and the OS calls raise ValueError on it
        raise HTTPException(status_code=404, detail="not found")
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        raise HTTPException(status_code=404, detail="not found")
    return candidate


def media_type(path: Path) -> str:
    """The Content-Type for a static file."""
    return _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


@router.api_route("/", methods=["GET", "HEAD"])
def index() -> FileResponse:
    """The dashboard page (a single page; views are chosen by the URL fragment)."""
    path = static_file("index.html")
    headers = {**_HEADERS, "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}
    return FileResponse(path, media_type=media_type(path), headers=headers)


@router.api_route("/static/{relative:path}", methods=["GET", "HEAD"])
def static(relative: str) -> FileResponse:
    """A static asset of the dashboard (scripts, styles, vendored libraries)."""
    path = static_file(relative)
    return FileResponse(path, media_type=media_type(path), headers=dict(_HEADERS))
