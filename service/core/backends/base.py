"""What the batcher needs from a runtime: one blocking call from float32 images to float32 logits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import numpy as np

BackendKind = Literal["onnxruntime", "torchscript", "remote"]
# "remote": another server runs the model (a KServe v2 predictor).
DeviceKind = Literal["cpu", "cuda", "remote"]


class Backend(ABC):
    """A loaded model. ``run`` is called from as many worker threads at once as the model has instances (or
    ``parallel_batches``), never on the event loop."""

    kind: BackendKind
    device: DeviceKind
    # The model's platform as Triton names it (onnxruntime_onnx, pytorch_libtorch), for v2 metadata.
    platform: str
    # Batches ``run`` takes at once whatever config.pbtxt's instance_group says (a remote predictor's client);
    # None: as many as the model's instances.
    parallel_batches: int | None = None

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``[N, C]`` float32 for a contiguous float32 batch ``[N, 3, S, S]``."""
