"""The REST API: model metadata and image classification."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request, Response
from starlette.convertors import StringConvertor, register_url_convertor

from niff_contract import REPORT_FILES, ContractError
from niff_serve.core.body_budget import BodyShare, Upload
from niff_serve.core.errors import BadRequest, NotFound, ServiceError, UnprocessableContent
from niff_serve.core.inference import InferenceRequest
from niff_serve.core.postprocessing import top_k_indices
from niff_serve.core.protocol_v2 import DecodedRequest
from niff_serve.core.runtime import ModelRuntime
from niff_serve.core.state import ServiceState
from niff_serve.http.body import image_uploads
from niff_serve.http.calls import body_reader, http_call, watch
from niff_serve.http.dependencies import SECURITY, Model, State, require_api_key
from niff_serve.http.schemas import (
    ERROR_RESPONSES,
    ClassifyResponse,
    ModelDetail,
    ModelList,
    ModelSummary,
)


class ModelNameConvertor(StringConvertor):
    """A path segment without ':' (model names have none), so ``GET /v1/models/x:classify`` is the classify
    route asked with the wrong method (405), not the metadata of a model called 'x:classify'."""

    regex = "[^/:]+"


register_url_convertor("model_name", ModelNameConvertor())

router = APIRouter(prefix="/v1", tags=["REST"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)
# Classification checks the API key itself: no dependency injection on the hot path.
hot_router = APIRouter(prefix="/v1", tags=["REST"], responses=ERROR_RESPONSES)

DEFAULT_TOP_K = 5
_TOP_K = {
    "parameters": [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "description": f"Classes to return per image, best first (default {DEFAULT_TOP_K}).",
            "schema": {"type": "integer", "minimum": 1, "default": DEFAULT_TOP_K},
        }
    ]
}
_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body, or several as multipart/form-data file parts (any field name).",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        },
    }
}


def summary(runtime: ModelRuntime) -> ModelSummary:
    folder = runtime.folder
    return ModelSummary(
        name=folder.name,
        version=folder.version,
        arch=folder.manifest.arch,
        num_classes=folder.num_classes,
        input_size=folder.input_size,
        backend=runtime.backend.kind,
        device=runtime.backend.device,
        max_batch_size=runtime.max_batch_size,
        max_batch_delay_ms=runtime.batcher.max_delay_s * 1000,
        ready=runtime.ready,
    )


@router.get("/models", response_model=ModelList, summary="List served models")
async def list_models(state: State) -> ModelList:
    return ModelList(models=[summary(runtime) for runtime in state.models.values()])


@router.get("/models/{name:model_name}", response_model=ModelDetail, summary="One model's metadata")
async def get_model(runtime: Model) -> ModelDetail:
    return ModelDetail(
        **summary(runtime).model_dump(),
        labels=list(runtime.folder.labels),
        niff=runtime.folder.manifest.model_dump(mode="json"),
    )


@router.get(
    "/models/{name:model_name}/report/{filename}",
    summary="A file of the model's kernel report (niff-export --report)",
    responses={200: {"content": {media: {} for media in set(REPORT_FILES.values())}, "description": "The file."}},
    response_class=Response,
)
async def report_file(runtime: Model, filename: str, state: State) -> Response:
    """The file as exported, its sha256 checked against niff.json first (500 when it changed since)."""
    report = runtime.folder.manifest.report
    if report is None or filename not in report.files:
        listed = ", ".join(report.files) if report else "none: export with --report"
        raise NotFound(f"model {runtime.name!r} has no report file {filename!r}; its report files: {listed}")
    try:
        data = await state.offload(runtime.folder.report_file, filename)
    except ContractError as exc:
        raise ServiceError(str(exc)) from None
    return Response(data, media_type=REPORT_FILES[filename])


@hot_router.post(
    "/models/{name}:classify",
    response_model=ClassifyResponse,
    openapi_extra=_IMAGE_BODY | _TOP_K | {"security": SECURITY},
    summary="Classify images",
    description="Decode, preprocess as niff.json prescribes, batch with concurrent requests, answer the top-k classes.",
)
async def classify(name: str, request: Request) -> Response:
    """The hot path: no dependency injection, no response validation; the answer is encoded once, as JSON."""
    state: ServiceState = request.app.state.service

    async def decode(body: bytes, runtime: ModelRuntime, share: BodyShare) -> Classification:
        top_k = _top_k(request.query_params.get("top_k"), runtime.folder.num_classes)
        uploads = await image_uploads(request, body, max_files=runtime.max_batch_size)
        inference = InferenceRequest(runtime.name, images=uploads, version=runtime.folder.version)
        return Classification(inference, {}, top_k)

    answered = await state.dataplane.call(http_call(request, name), body_reader(request, state), decode, watch(request))
    runtime, result, uploads = answered.runtime, answered.result, answered.decoded.uploads
    started = time.thread_time()
    probabilities = result.probabilities
    best = top_k_indices(probabilities, answered.decoded.top_k)
    labels = runtime.folder.labels
    answer = {
        "model": runtime.name,
        "model_version": result.version,
        "predictions": [
            {
                "filename": upload.filename,
                "top_k": [{"label": labels[i], "index": int(i), "probability": float(row[i])} for i in order],
            }
            for upload, row, order in zip(uploads, probabilities, best, strict=True)
        ],
        "timing": {
            "preprocess_ms": result.preprocess_s * 1000,
            "queue_ms": result.batch.queue_s * 1000,
            "inference_ms": result.batch.inference_s * 1000,
            "total_ms": answered.deadline.elapsed() * 1000,
            "batch_size": result.batch.batch_size,
        },
    }
    content = json.dumps(answer, separators=(",", ":")).encode()
    runtime.metrics.count_cpu("encode", time.thread_time() - started)
    return Response(content, media_type="application/json")


@dataclass(frozen=True)
class Classification(DecodedRequest):
    """A classify request: its images, and how many classes to answer for each."""

    top_k: int

    @property
    def uploads(self) -> Sequence[Upload]:
        assert self.inference.images is not None  # classify always sends images
        return self.inference.images


def _top_k(text: str | None, num_classes: int) -> int:
    if text is None:
        return min(DEFAULT_TOP_K, num_classes)
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise UnprocessableContent(f"top_k must be a positive integer, got {text!r}")
    if int(text) > num_classes:
        raise BadRequest(f"top_k is {text}; the model has {num_classes} classes")
    return int(text)
