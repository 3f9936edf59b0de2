"""ONNX Runtime backend: CUDA execution provider when the installed build and a GPU allow it, else CPU.

On the GPU the input is copied once into device memory and bound with IO binding, so the runtime does
not stage it again; the logits are copied back in one transfer.

Before anything runs, the graph's input and output are compared with what niff.json says (names, element
type, per-image shape), so an ONNX file from another model is refused with one line that says how it
differs, not with ONNX Runtime's message from the warm-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from niff_contract import TRITON_PLATFORMS
from niff_serve.core.backends.base import Backend, DeviceKind
from niff_serve.core.devices import cuda_device_count
from niff_serve.core.errors import ConfigurationError

CUDA_PROVIDER = "CUDAExecutionProvider"
FLOAT32 = "tensor(float)"


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


def _describe(tensor: ort.NodeArg) -> str:
    """A graph tensor as ``float32 [batch, 3, 24, 24]``: dynamic axes by their name, unknown ones as ``?``."""
    elem = tensor.type.removeprefix("tensor(").removesuffix(")")
    elem = {"float": "float32", "double": "float64"}.get(elem, elem)
    if tensor.shape is None:
        return f"{elem} (shape unknown)"
    return f"{elem} [{', '.join('?' if d is None else str(d) for d in tensor.shape)}]"


def check_graph_tensor(path: Path, verb: str, tensor: ort.NodeArg, per_item: tuple[int, ...]) -> None:
    """``tensor`` (an input or output of the graph) must be float32 ``[N, *per_item]``; a dynamic axis
    matches any size. The batch axis is left to the warm-up, which runs batch 1 and the largest batch."""
    shape = tensor.shape
    fits = (
        tensor.type == FLOAT32
        and shape is not None
        and len(shape) == 1 + len(per_item)
        and all(not isinstance(d, int) or d == want for d, want in zip(shape[1:], per_item, strict=True))
    )
    if not fits:
        raise ConfigurationError(
            f"{path.name} {verb} {tensor.name!r} as {_describe(tensor)}, but niff.json says float32 "
            f"[N, {', '.join(map(str, per_item))}]: is the file from another model?"
        )


class OnnxRuntimeBackend(Backend):
    kind = "onnxruntime"
    platform = TRITON_PLATFORMS["onnx"]

    def __init__(
        self,
        path: Path,
        device: DeviceKind,
        input_name: str,
        output_name: str,
        threads: int,
        input_shape: tuple[int, ...] | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> None:
        """``input_shape``/``output_shape`` (per image, from niff.json), when given, are checked against the graph."""
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
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        if input_name not in inputs or output_name not in outputs:
            raise ConfigurationError(
                f"{path.name}: graph inputs {list(inputs)} / outputs {list(outputs)} lack {input_name!r} / "
                f"{output_name!r} (niff.json's names)"
            )
        if len(inputs) != 1:
            raise ConfigurationError(f"{path.name} takes {len(inputs)} inputs {list(inputs)}, niff.json names one")
        if input_shape is not None:
            check_graph_tensor(path, "takes input", inputs[input_name], input_shape)
        if output_shape is not None:
            check_graph_tensor(path, "returns output", outputs[output_name], output_shape)
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
