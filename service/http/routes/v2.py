"""KServe v2 / Open Inference Protocol endpoints (what Triton and ``tritonclient.http`` speak), and Triton's
model-configuration, statistics and model-repository extensions."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import StrictBool

from niff_contract import config_json, message_json
from niff_serve.core import extensions
from niff_serve.core.body_budget import BodyShare
from niff_serve.core.inference import InferenceResult
from niff_serve.core.protocol_v2 import EXTENSIONS, DecodedRequest, ModelMetadata, ModelReady, ServerMetadata
from niff_serve.core.runtime import ModelRuntime
from niff_serve.core.state import ServiceState
from niff_serve.http.calls import body_reader, http_call, watch
from niff_serve.http.dependencies import SECURITY, Model, State, require_api_key
from niff_serve.http.schemas import ERROR_RESPONSES
from niff_serve.http.v2_json import HEADER_LENGTH, InferRequest, decode_request, encode_response
from niff_serve.version import __version__

router = APIRouter(prefix="/v2", tags=["KServe v2"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
# Inference checks the API key itself: no dependency injection on the hot path.
hot_router = APIRouter(prefix="/v2", tags=["KServe v2"], responses=ERROR_RESPONSES)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` substituted: inside an operation, ``#/$defs`` would point
    at the OpenAPI document's root."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(value) for value in node] if isinstance(node, list) else node

    return resolve(schema)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "A v2 inference request: JSON, or with the binary tensor data extension a JSON header of "
            f"`{HEADER_LENGTH}` bytes followed by the raw tensors."
        ),
        "content": {
            "application/json": {"schema": _inlined(InferRequest.model_json_schema())},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="niff-serve", version=__version__, extensions=list(EXTENSIONS))


# Before /models/{name}, which would take "stats" for a model name.
@router.get("/models/stats", summary="Every model's statistics (Triton's statistics extension)")
async def all_statistics(state: State) -> dict[str, Any]:
    return message_json(extensions.statistics(state), with_defaults=True)


@router.get("/models/{name}", response_model=ModelMetadata, summary="Model metadata")
@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, include_in_schema=False)
async def get_model_metadata(runtime: Model) -> ModelMetadata:
    return runtime.metadata()


@router.get(
    "/models/{name}/ready",
    response_model=ModelReady,
    responses={503: {"model": ModelReady, "description": "Loading, or draining after SIGTERM."}},
    summary="Model readiness (200 ready, 503 not)",
)
@router.get("/models/{name}/versions/{version}/ready", response_model=ModelReady, include_in_schema=False)
async def model_ready(runtime: Model, state: State) -> JSONResponse:
    ready = runtime.ready and state.ready
    body = ModelReady(name=runtime.name, ready=ready)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/models/{name}/config", summary="Model configuration (Triton's model configuration extension)")
@router.get("/models/{name}/versions/{version}/config", include_in_schema=False)
async def model_configuration(runtime: Model) -> dict[str, Any]:
    """The model's config.pbtxt as JSON, with the max batch size and queue delay this server uses."""
    return config_json(extensions.served_config(runtime))


@router.get("/models/{name}/stats", summary="Model statistics (Triton's statistics extension)")
@router.get("/models/{name}/versions/{version}/stats", include_in_schema=False)
async def model_statistics(runtime: Model, state: State) -> dict[str, Any]:
    return message_json(extensions.statistics(state, runtime.name), with_defaults=True)


@router.post("/repository/index", summary="Models in the repository and their state")
async def repository_index(
    state: State,
    ready: Annotated[StrictBool, Body(embed=True, description="Only models that are ready (true or false).")] = False,
) -> list[dict[str, Any]]:
    return message_json(extensions.repository_index(state, ready)).get("models", [])


@router.post("/repository/models/{name}/load", summary="Not supported: models load at start-up")
@router.post("/repository/models/{name}/unload", summary="Not supported: models stay until the server stops")
async def model_control(name: str) -> None:
    raise extensions.refuse_model_control()


@hot_router.post(
    "/models/{name}/infer", openapi_extra=_INFER_BODY | {"security": SECURITY}, summary="Run inference (v2 protocol)"
)
@hot_router.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    """The hot path: no dependency injection; decoding and encoding run on the worker pool."""
    state: ServiceState = request.app.state.service
    header_length = request.headers.get(HEADER_LENGTH)

    async def decode(body: bytes, runtime: ModelRuntime, share: BodyShare) -> DecodedRequest:
        max_json = state.settings.max_json_bytes
        return await state.offload(
            decode_request, body, header_length, runtime.name, runtime.tensor_shape, max_json, share.claim
        )

    call = http_call(request, name, version)
    answered = await state.dataplane.call(call, body_reader(request, state), decode, watch(request))
    content, headers = await state.offload(_timed_encode, answered.runtime, answered.result, answered.decoded.outputs)
    return Response(content, headers=headers)


def _timed_encode(
    runtime: ModelRuntime, result: InferenceResult, outputs: dict[str, bool]
) -> tuple[bytes, dict[str, str]]:
    started = time.thread_time()
    try:
        return encode_response(result, outputs)
    finally:
        runtime.metrics.count_cpu("encode", time.thread_time() - started)
