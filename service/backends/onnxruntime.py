"""ONNX Runtime backend: CUDA execution provider when the installed build and a GPU allow it, else CPU.

On the GPU the input is copied once into device memory and bound with IO binding, so the runtime does
not stage it again; the logits are copied back in one transfer.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import onnxruntime as ort

from niff_serve.backends.base import Backend, DeviceKind
from niff_serve.errors import ConfigurationError

CUDA_PROVIDER = "CUDAExecutionProvider"


def cuda_device_count() -> int:
    """GPUs the NVIDIA driver reports; 0 on a host without the driver or without a GPU."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def load_cuda_libraries() -> None:
    """Load CUDA and cuDNN from PyPI's NVIDIA wheels when they are installed (the GPU images' only CUDA,
    the same libraries torch's CUDA build loads), before the CUDA provider needs them; else onnxruntime
    falls back to the system's library path. onnxruntime before 1.21 has no preload_dlls."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload(cuda=True, cudnn=True, msvc=False)


def cuda_available() -> bool:
    """Whether this onnxruntime build ships the CUDA provider *and* a GPU is there to run it.

    The provider list alone only describes the build: onnxruntime-gpu lists CUDA on a GPU-less host too.
    """
    return CUDA_PROVIDER in ort.get_available_providers() and cuda_device_count() > 0


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"

    def __init__(self, path: Path, device: DeviceKind, input_name: str, output_name: str, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle intra-op threads would otherwise spin between batches, taking CPU from preprocessing and HTTP.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[str] = [CUDA_PROVIDER, "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        if device == "cuda":
            load_cuda_libraries()
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for every load failure
            raise ConfigurationError(f"ONNX Runtime cannot load {path.name}: {exc}") from None
        if device == "cuda" and CUDA_PROVIDER not in self._session.get_providers():
            raise ConfigurationError("the CUDA execution provider could not start (no usable GPU?)")
        names = ([i.name for i in self._session.get_inputs()], [o.name for o in self._session.get_outputs()])
        if input_name not in names[0] or output_name not in names[1]:
            raise ConfigurationError(
                f"{path.name}: graph inputs {names[0]} / outputs {names[1]} lack {input_name!r} / {output_name!r}"
            )
        self.device = device
        self._input_name = input_name
        self._output_name = output_name

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.device == "cuda":
            binding = self._session.io_binding()
            binding.bind_ortvalue_input(self._input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
            binding.bind_output(self._output_name, "cuda", 0)
            self._session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self._session.run([self._output_name], {self._input_name: batch})[0]
