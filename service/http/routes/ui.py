"""The browser page at ``/`` and its assets under ``/ui/``: plain files shipped in the package, no CDN.

The page is a client of the public endpoints only. It is served with a Content-Security-Policy that
allows nothing but this server's own scripts, styles, images and API, so a model name or label can never
run as script even if the page's own escaping had a gap.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from niff_serve.core.errors import NotFound

router = APIRouter(include_in_schema=False)

ASSETS = {
    "ui.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_FILES = resources.files("niff_serve.http") / "ui"


def _file(name: str, media_type: str) -> Response:
    return Response((_FILES / name).read_bytes(), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
async def page() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no page asset {name!r}")
    return _file(name, ASSETS[name])
