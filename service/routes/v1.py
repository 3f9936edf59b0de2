"""The REST API: model metadata and image classification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.convertors import StringConvertor, register_url_convertor

from niff_serve.auth import require_api_key
from niff_serve.dataplane import InferenceRequest
from niff_serve.deadline import Deadline
from niff_serve.disconnect import cancel_on_disconnect
from niff_serve.errors import BadRequest
from niff_serve.postprocessing import top_k_indices
from niff_serve.request_body import image_uploads, read_body
from niff_serve.runtime import Model, ModelRuntime, State
from niff_serve.schemas import (
    ERROR_RESPONSES,
    ClassifyResponse,
    ClassScore,
    ModelDetail,
    ModelList,
    ModelSummary,
    Prediction,
    Timing,
)


class ModelNameConvertor(StringConvertor):
    """A path segment without ':' (model names have none), so ``GET /v1/models/x:classify`` is the classify
    route asked with the wrong method (405), not the metadata of a model called 'x:classify'."""

    regex = "[^/:]+"


register_url_convertor("model_name", ModelNameConvertor())

router = APIRouter(prefix="/v1", tags=["REST"], dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)

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


@router.post(
    "/models/{name}:classify",
    response_model=ClassifyResponse,
    openapi_extra=_IMAGE_BODY,
    summary="Classify images",
    description="Decode, preprocess as niff.json prescribes, batch with concurrent requests, answer the top-k classes.",
)
async def classify(
    runtime: Model,
    request: Request,
    state: State,
    top_k: Annotated[int, Query(ge=1, description="Classes to return per image, best first.")] = 5,
) -> ClassifyResponse:
    deadline = Deadline(state.settings.request_timeout_s)
    if top_k > runtime.folder.num_classes:
        raise BadRequest(f"top_k is {top_k}; the model has {runtime.folder.num_classes} classes")
    with state.body_budget.share() as share:
        body = await read_body(request, state.settings.max_upload_bytes, deadline, share)
        uploads = await image_uploads(request, body, max_files=runtime.max_batch_size)
        inference = InferenceRequest(runtime.name, images=uploads, version=runtime.folder.version)
        result = await cancel_on_disconnect(request.receive, state.dataplane.infer(inference, deadline))
    probabilities = result.probabilities
    best = top_k_indices(probabilities, top_k)
    labels = runtime.folder.labels
    predictions = [
        Prediction(
            filename=upload.filename,
            top_k=[ClassScore(label=labels[i], index=int(i), probability=float(row[i])) for i in order],
        )
        for upload, row, order in zip(uploads, probabilities, best, strict=True)
    ]
    timing = Timing(
        preprocess_ms=result.preprocess_s * 1000,
        queue_ms=result.batch.queue_s * 1000,
        inference_ms=result.batch.inference_s * 1000,
        total_ms=deadline.elapsed() * 1000,
        batch_size=result.batch.batch_size,
    )
    return ClassifyResponse(
        model=runtime.name, model_version=runtime.folder.version, predictions=predictions, timing=timing
    )
