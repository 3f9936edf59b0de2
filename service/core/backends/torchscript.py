"""TorchScript backend (CUDA or CPU). Importing this module imports torch; only the factory does that.

On the GPU, batches go through pinned host buffers allocated once for the largest batch, so host-to-device
and device-to-host copies are asynchronous DMA transfers; one stream synchronisation ends each call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from niff_contract import TRITON_PLATFORMS
from niff_serve.core.backends.base import Backend, DeviceKind
from niff_serve.core.errors import ConfigurationError


def cuda_available() -> bool:
    return torch.cuda.is_available()


class TorchScriptBackend(Backend):
    kind = "torchscript"
    platform = TRITON_PLATFORMS["torchscript"]

    def __init__(
        self,
        path: Path,
        device: DeviceKind,
        max_batch_size: int,
        sample_shape: tuple[int, ...],
        num_classes: int,
        threads: int,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # torch.jit.load raises RuntimeError and friends for unreadable archives
            raise ConfigurationError(f"torch.jit.load cannot load {path.name}: {exc}") from None
        self._module = module.eval()
        self.device = device
        self._torch_device = torch.device(device)
        if device == "cuda":
            self._host_in = torch.empty((max_batch_size, *sample_shape), dtype=torch.float32).pin_memory()
            self._host_out = torch.empty((max_batch_size, num_classes), dtype=torch.float32).pin_memory()

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            inputs = torch.from_numpy(batch)
            if self.device == "cpu":
                return self._module(inputs).numpy()
            n = inputs.shape[0]
            staged = self._host_in[:n]
            staged.copy_(inputs)
            logits = self._module(staged.to(self._torch_device, non_blocking=True))
            result = self._host_out[:n]
            result.copy_(logits, non_blocking=True)
            torch.cuda.current_stream(self._torch_device).synchronize()
            return result.numpy().copy()
