"""What every transport decodes a request into, and what the data plane answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from niff_serve.core.batcher import BatchResult
from niff_serve.core.body_budget import Upload
from niff_serve.core.postprocessing import softmax


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
