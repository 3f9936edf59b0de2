"""Where an ONNX artifact is meant to run (``--target``), and running each artifact there for the parity gate.

One ONNX form is not the fastest everywhere: a compact export's circular padding is one ``Pad(mode="wrap")``
in ONNX Runtime's fastest form, which OpenVINO's ONNX front end refuses, while the Slices and Concats that
every runtime reads cost ONNX Runtime up to 1.5× per padding (docs/benchmarks.md). So the target picks:

* ``portable`` (default): forms every runtime here reads; the gate runs the file in ONNX Runtime and, when
  it is installed, in OpenVINO;
* ``onnxruntime``: ONNX Runtime's fastest forms; the gate runs it there alone;
* ``openvino``: the portable forms, and the gate must run it in OpenVINO (an error when it is not installed).

``--fft dft`` writes ONNX ``DFT`` ops, which OpenVINO 2026.4 misreads (wrong shapes for one-sided
transforms): such a file is for ONNX Runtime alone, the default target there.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

from niff_contract import INPUT_NAME, OUTPUT_NAME
from niff_export.errors import ExportError

TARGETS: tuple[str, ...] = ("portable", "onnxruntime", "openvino")
DEFAULT_TARGET = "portable"
# The runtimes that run each target's ONNX files; ONNX Runtime always (the export extra installs it).
_TARGET_RUNTIMES = {
    "portable": ("onnxruntime", "openvino"),
    "onnxruntime": ("onnxruntime",),
    "openvino": ("onnxruntime", "openvino"),
}
# The package that carries each runtime's version.
_DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch"}
OPENVINO_INSTALL = "pip install 'niff-deploy[openvino]'"

Runner = Callable[[torch.Tensor], torch.Tensor]


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_target(target: str | None, onnx_lowering: str | None) -> str:
    """The target an export uses: ``target``, or by default ``portable`` (``onnxruntime`` for DFT ops).

    ``onnx_lowering`` is the ONNX artifact's lowering, None without one. Raises for a target the
    lowering cannot meet, or ``openvino`` without OpenVINO installed.
    """
    dft = onnx_lowering == "dft"
    if target is None:
        return "onnxruntime" if dft else DEFAULT_TARGET
    if target not in TARGETS:
        raise ExportError(f"unknown --target {target!r}; choose one of {', '.join(TARGETS)}")
    if dft and target != "onnxruntime":
        raise ExportError(
            f"--fft dft writes ONNX DFT ops, which OpenVINO cannot read correctly: --target {target} needs "
            "--fft matmul (the default), or export with --target onnxruntime"
        )
    if target == "openvino" and onnx_lowering is not None and not openvino_installed():
        raise ExportError(
            f"--target openvino verifies the ONNX file in OpenVINO, which is not installed: {OPENVINO_INSTALL}"
        )
    return target


def wrap_padding(target: str) -> bool:
    """Whether circular padding goes into ONNX as ``Pad(mode="wrap")`` (ONNX Runtime's fastest form)."""
    return target == "onnxruntime"


def gate_runtimes(fmt: str, target: str) -> tuple[str, ...]:
    """The runtimes the parity gate runs an artifact of format ``fmt`` in: those of the target that are installed."""
    if fmt != "onnx":
        return ("torch",)
    return tuple(name for name in _TARGET_RUNTIMES[target] if name != "openvino" or openvino_installed())


def runtime_label(name: str) -> str:
    """A runtime with its installed version, as niff.json records it: ``"openvino 2026.4.1"``."""
    return f"{name} {metadata.version(_DISTRIBUTIONS[name])}"


def runner(runtime: str, path: Path) -> Runner:
    """A function that runs the artifact at ``path`` in ``runtime`` (loaded once) on a float32 batch."""
    return {"onnxruntime": _onnxruntime, "openvino": _openvino, "torch": _torchscript}[runtime](path)


def _onnxruntime(path: Path) -> Runner:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])


def _openvino(path: Path) -> Runner:
    """OpenVINO's CPU device at float32 precision: its default on CPUs with bfloat16 units is bfloat16, whose
    ~1e-2 relative error would hide what the gate checks (the file's own numbers)."""
    import openvino as ov

    try:
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as exc:
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ExportError(
            f"OpenVINO cannot load {path.name}; nothing was written. Export with --target onnxruntime for ONNX "
            f"Runtime alone, and please report this with the checkpoint if you can. OpenVINO said: {reason}"
        ) from exc
    return lambda batch: torch.from_numpy(compiled(batch.numpy())[0].copy())


def _torchscript(path: Path) -> Runner:
    module = torch.jit.load(str(path), map_location="cpu")

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(batch)

    return run
