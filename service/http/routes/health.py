"""Probes and metrics: always open (no auth), cheap, never touching a model."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from niff_serve.core.metrics import CONTENT_TYPE_LATEST
from niff_serve.core.state import ServiceState
from niff_serve.http.dependencies import State
from niff_serve.http.schemas import Health, Liveness, Readiness

router = APIRouter(tags=["Health"])

_READY_RESPONSES: dict[int | str, dict] = {
    503: {"model": Readiness, "description": "Loading, or draining after SIGTERM."}
}


def _readiness(state: ServiceState) -> JSONResponse:
    body = Readiness(ready=state.ready, models={name: runtime.ready for name, runtime in state.models.items()})
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


@router.get("/v2/health/live", response_model=Liveness, summary="Liveness (KServe v2)")
async def live() -> Liveness:
    return Liveness(live=True)


@router.get("/v2/health/ready", response_model=Readiness, responses=_READY_RESPONSES, summary="Readiness (KServe v2)")
async def ready(state: State) -> JSONResponse:
    return _readiness(state)


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=_READY_RESPONSES, summary="Readiness")
async def readyz(state: State) -> JSONResponse:
    return _readiness(state)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
)
async def metrics(state: State) -> Response:
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
