"""Response bodies of the REST (v1) and health endpoints; they are also the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong, in words.")


# The error answers every model endpoint may give, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 408, 413, 415, 422, 500, 503, 504)
}


class ModelSummary(BaseModel):
    name: str
    version: str
    arch: str | None
    num_classes: int
    input_size: int
    backend: str
    device: str
    max_batch_size: int = Field(description="Most images per request and per batch on this server.")
    max_batch_delay_ms: float = Field(description="Longest wait for a fuller batch once a request is queued.")
    ready: bool


class ModelDetail(ModelSummary):
    labels: list[str]
    niff: dict[str, Any] = Field(description="The model folder's niff.json, as exported.")


class ModelList(BaseModel):
    models: list[ModelSummary]


class ClassScore(BaseModel):
    label: str
    index: int
    probability: float


class Prediction(BaseModel):
    filename: str | None = Field(description="The multipart file name, when the image came as a file part.")
    top_k: list[ClassScore] = Field(description="Best classes first.")


class Timing(BaseModel):
    preprocess_ms: float = Field(description="Decoding and preprocessing this request's images.")
    queue_ms: float = Field(description="Waiting for a batch to leave.")
    inference_ms: float = Field(description="Backend time of the batch this request rode in.")
    total_ms: float = Field(description="From request arrival to the answer.")
    batch_size: int = Field(description="Images in that batch, all requests together.")


class ClassifyResponse(BaseModel):
    model: str
    model_version: str
    predictions: list[Prediction]
    timing: Timing


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    models: dict[str, bool] = Field(default_factory=dict)


class Liveness(BaseModel):
    live: bool
