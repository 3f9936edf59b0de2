"""Every HTTP route needs the API key unless it is meant to be open: a new route cannot skip auth silently.

In-process (the ASGI app through httpx, nothing loaded): the key is checked before any model is looked up,
so each protected route answers 401 even on a server with no models.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from starlette.routing import Route

from niff_serve.core.settings import Settings
from niff_serve.process.serving import create_app

pytestmark = pytest.mark.fast

KEY = "route-auth-key"
# Open by design: probes, the Prometheus scrape, the API documents and the page.
OPEN = {
    "/v2/health/live",
    "/v2/health/ready",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/",
    "/ui/{name}",
}


def routes(app) -> list[tuple[str, str]]:
    return sorted(
        (method, route.path) for route in app.routes if isinstance(route, Route) for method in route.methods - {"HEAD"}
    )


def concrete(path: str) -> str:
    """A request path for a route template: every parameter filled in."""
    return re.sub(r"\{[^}:]+(:[^}]+)?\}", "m", path)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return create_app(Settings(model_repository=tmp_path_factory.mktemp("empty-repository"), api_key=KEY))


def ask(app, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, headers=headers, content=b"{}")

    return asyncio.run(send())


def test_the_app_has_protected_and_open_routes(app):
    paths = {path for _, path in routes(app)}
    assert paths >= OPEN, f"open routes missing from the app: {sorted(OPEN - paths)}"
    assert len(paths - OPEN) >= 15


def test_every_route_but_the_open_ones_needs_the_key(app):
    answered = {(m, p): ask(app, m, concrete(p)) for m, p in routes(app) if p not in OPEN}
    unprotected = {f"{m} {p}": r.status_code for (m, p), r in answered.items() if r.status_code != 401}
    assert not unprotected, f"routes that answered without the API key: {unprotected}"
    assert all("error" in r.json() for r in answered.values())


def test_a_wrong_key_is_refused_everywhere_a_key_is_needed(app):
    wrong = {"Authorization": "Bearer not-the-key"}
    statuses = {ask(app, m, concrete(p), wrong).status_code for m, p in routes(app) if p not in OPEN}
    assert statuses == {401}


def test_the_right_key_passes_the_check(app):
    # Past the key check, an empty server says the model is unknown.
    response = ask(app, "GET", "/v1/models/m", {"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 404 and "unknown model" in response.json()["error"]
