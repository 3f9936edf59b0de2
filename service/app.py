"""The FastAPI application: routes, error handling, and the lifespan that loads the models.

Constructing the app is cheap and loads nothing; models load and warm up in the lifespan startup,
and the server reports ready only after that. The gRPC endpoint starts after the models, in the
same event loop, and stops before them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from niff_contract import ContractError, describe_errors
from niff_serve.errors import ServiceError
from niff_serve.grpc_server import GrpcEndpoint
from niff_serve.middleware import RequestContextMiddleware
from niff_serve.openapi import served_openapi
from niff_serve.routes import docs, health, ui, v1, v2
from niff_serve.runtime import ServiceState
from niff_serve.settings import Settings
from niff_serve.version import __version__

logger = logging.getLogger(__name__)

_DESCRIPTION = """Image classification with exported NIFF models.

* `POST /v1/models/{name}:classify`: images in, top-k classes out.
* KServe v2 / Open Inference Protocol under `/v2` (works with `tritonclient.http`), with Triton's
  model configuration, statistics and repository index; the same protocol over gRPC on its own port.
* Probes: `/v2/health/live`, `/v2/health/ready`, `/healthz`, `/readyz`; Prometheus: `/metrics`.
* A page for people at `/`: the served models, their cards, and an image to classify.

Errors answer `{"error": "..."}` with a 4xx/5xx status. When the server has an API key, model endpoints
need `Authorization: Bearer <key>`.
"""


def create_app(settings: Settings, *, worker: bool = False) -> FastAPI:
    """The service app for ``settings``; the models load when the app starts, not here.

    ``worker``: one of several processes serving the same ports.
    """
    state = ServiceState(settings)
    grpc = GrpcEndpoint(state, shared_port=worker)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await state.start()
            try:
                await grpc.start()
            except BaseException:
                await state.stop()
                raise
        except Exception as exc:
            state.startup_error = str(exc) if isinstance(exc, ContractError) else f"{type(exc).__name__}: {exc}"
            logger.error("start-up failed: %s", state.startup_error)
            raise
        yield
        await grpc.stop()
        await state.stop()

    app = FastAPI(
        title="niff-serve",
        version=__version__,
        description=_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = state
    app.state.grpc = grpc
    app.openapi = served_openapi(app, state)  # type: ignore[method-assign]
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    routers = [v1.hot_router, v1.router, v2.hot_router, v2.router, health.router, docs.router]
    if settings.ui:
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
