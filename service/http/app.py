"""The FastAPI application: routes, error handling, request bookkeeping. Constructing it loads nothing."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from niff_contract import describe_errors
from niff_serve.core.errors import ServiceError
from niff_serve.core.state import ServiceState
from niff_serve.http.middleware import RequestContextMiddleware
from niff_serve.http.openapi import served_openapi
from niff_serve.http.routes import docs, health, ui, v1, v2
from niff_serve.version import __version__

# What FastAPI runs around serving: start-up before the first request, shut-down after the last.
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

_DESCRIPTION = """Image classification with exported NIFF models.

* `POST /v1/models/{name}:classify`: images in, top-k classes out.
* KServe v2 / Open Inference Protocol under `/v2` (works with `tritonclient.http`), with Triton's
  model configuration, statistics and repository index; the same protocol over gRPC on its own port.
* Probes: `/v2/health/live`, `/v2/health/ready`, `/healthz`, `/readyz`; Prometheus: `/metrics`.
* A page for people at `/`: the served models, their cards, and an image to classify.

Errors answer `{"error": "..."}` with a 4xx/5xx status. When the server has an API key, model endpoints
need `Authorization: Bearer <key>`.
"""


def http_app(state: ServiceState, lifespan: Lifespan | None = None) -> FastAPI:
    """The HTTP face of ``state``: routes, error answers, request bookkeeping and the OpenAPI document.

    ``lifespan`` starts and stops what the app serves (:func:`niff_serve.process.serving.create_app`).
    """
    app = FastAPI(
        title="niff-serve",
        version=__version__,
        description=_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = state
    app.openapi = served_openapi(app, state)  # type: ignore[method-assign]
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    routers = [v1.hot_router, v1.router, v2.hot_router, v2.router, health.router, docs.router]
    if state.settings.ui:
        routers.append(ui.router)
    for router in routers:
        # The routes themselves rather than include_router's lazy wrapper, so `app.routes` lists every path.
        app.router.routes.extend(router.routes)
    return app


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"error": describe_errors(exc.errors())}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = f"{exc.detail}: {request.method} {request.url.path}"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)
