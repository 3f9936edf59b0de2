"""The protocol-independent core of inference (KServe's ``DataPlane``): one typed entry, ``infer``.

Transports (REST classify, KServe v2 over HTTP and gRPC) decode their wire format into an
:class:`InferenceRequest`, call :meth:`DataPlane.infer`, and encode the :class:`InferenceResult`;
model lookup, versions, admission, preprocessing, batching, deadlines and the per-model statistics
live here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from niff_serve.batcher import BatchResult
from niff_serve.deadline import Deadline
from niff_serve.errors import NotFound
from niff_serve.postprocessing import softmax
from niff_serve.request_body import Upload

if TYPE_CHECKING:
    from niff_serve.runtime import ModelRuntime, ServiceState


@dataclass(frozen=True)
class InferenceRequest:
    """What a client asks of a model: either preprocessed tensors or encoded images."""

    model: str
    tensor: np.ndarray | None = None
    images: Sequence[Upload] | None = None
    version: str | None = None
    id: str | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if (self.tensor is None) == (self.images is None):
            raise ValueError("an inference request carries either a tensor or images")


@dataclass(frozen=True)
class InferenceResult:
    model: str
    version: str
    id: str | None
    logits: np.ndarray
    batch: BatchResult
    preprocess_s: float

    @cached_property
    def probabilities(self) -> np.ndarray:
        return softmax(self.logits)


class DataPlane:
    def __init__(self, state: ServiceState) -> None:
        self._state = state

    def model(self, name: str, version: str | None = None) -> ModelRuntime:
        """The served model ``name`` (404 when unknown, or when ``version`` is not the one served)."""
        models = self._state.models
        runtime = models.get(name)
        if runtime is None:
            raise NotFound(f"unknown model {name!r}; this server has {', '.join(models) or 'none'}")
        if version is not None and version != runtime.folder.version:
            raise NotFound(f"model {name!r} has no version {version!r}; it serves version {runtime.folder.version}")
        return runtime

    async def infer(self, request: InferenceRequest, deadline: Deadline) -> InferenceResult:
        """Admit, preprocess (images), batch and run ``request`` within ``deadline`` (tightened by its timeout)."""
        runtime = self.model(request.model, request.version)
        statistics = runtime.metrics.statistics
        try:
            if request.timeout_s is not None:
                deadline = deadline.tightened(request.timeout_s)
            if request.images is not None:
                batch, preprocess_s = await runtime.infer_images(request.images, deadline)
            else:
                assert request.tensor is not None
                batch, preprocess_s = await runtime.infer_tensor(request.tensor, deadline), 0.0
        except BaseException:  # cancelled (the client left) counts as failed too
            statistics.record_failure(deadline.elapsed())
            raise
        statistics.record_success(
            deadline.elapsed(),
            len(batch.logits),
            batch.queue_s,
            preprocess_s + batch.input_s,
            batch.inference_s,
            batch.output_s,
        )
        return InferenceResult(request.model, runtime.folder.version, request.id, batch.logits, batch, preprocess_s)
