"""Which lowering each spectral layer gets: the default table, or the fastest candidate measured (``--tune``).

Tuning times every candidate of every distinct layer shape on the runtime the artifact is for (ONNX
Runtime, CPU or its CUDA provider when installed and a GPU is present; TorchScript on CUDA when torch
sees a GPU, else CPU), in the artifact's precision, at one batch size. Candidates run in interleaved
rounds; each round keeps a candidate's fastest run (other processes only ever add time) and the
candidate's time is the median over rounds, so a background load slows all candidates alike.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from niff_contract import INPUT_NAME, SpectralLayer, TuningRecord
from niff_export.artifacts import write_onnx
from niff_export.lowering import (
    KRONECKER_TUNE_MAX_SIZE,
    MATMUL_LOWERINGS,
    PER_IMAGE_LOWERINGS,
    default_layer_lowering,
    lower_layer,
    spectral_layers,
)
from niff_export.precision import in_precision
from niff_export.spectral import FixedSpectrum, SpectralMix

# TorchScript's profiling executor specialises a graph during its first two runs.
ROUNDS, RUNS_PER_ROUND, WARMUP_RUNS = 5, 3, 3


def candidates(fmt: str, lowering: str, size: int) -> tuple[str, ...]:
    """Per-layer lowerings for a ``size``² layer in an artifact of ``fmt`` built with the ``--fft`` family ``lowering``.

    The Kronecker form's n⁴-sized matrices are not worth timing on large maps; running one image at a
    time is an ONNX-only choice.
    """
    if lowering != "matmul" and fmt != "torchscript":
        return ("fft",)
    options = [name for name in MATMUL_LOWERINGS if name != "kronecker" or size <= KRONECKER_TUNE_MAX_SIZE]
    if fmt == "onnx":
        options += PER_IMAGE_LOWERINGS
    return tuple(options) if lowering == "matmul" else ("fft", *options)


def _signature(layer: FixedSpectrum) -> tuple[str, int, int, int]:
    shape = layer.spectrum.shape
    if isinstance(layer, SpectralMix):
        return ("full", layer.size, int(shape[0]), int(shape[1]))
    return ("depthwise", layer.size, int(shape[0]), int(shape[0]))


def _record(name: str, layer: FixedSpectrum, lowering: str, timings: dict[str, float]) -> SpectralLayer:
    kind, size, channels, out_channels = _signature(layer)
    return SpectralLayer(
        layer=name,
        kind=kind,
        map_size=size,
        channels=channels,
        out_channels=out_channels,
        lowering=lowering,
        timings_ms=timings,
    )


def default_choices(model: nn.Module, lowering: str) -> list[SpectralLayer]:
    """Every spectral layer with the default table's lowering for the ``--fft`` family ``lowering``."""
    return [_record(name, layer, default_layer_lowering(layer, lowering), {}) for name, layer in spectral_layers(model)]


def tune_layers(model: nn.Module, fmt: str, lowering: str, *, batch: int, fp16: bool = False) -> list[SpectralLayer]:
    """Every spectral layer with the fastest of its candidates, timed once per distinct layer shape."""
    measured: dict[tuple[str, int, int, int], dict[str, float]] = {}
    choices = []
    for name, layer in spectral_layers(model):
        signature = _signature(layer)
        options = candidates(fmt, lowering, layer.size)
        if signature not in measured:
            measured[signature] = _time_candidates(layer, options, fmt, batch, fp16) if len(options) > 1 else {}
        timings = measured[signature]
        best = min(timings, key=timings.__getitem__) if timings else options[0]
        choices.append(_record(name, layer, best, timings))
    return choices


def tuning_record(fmt: str, batch: int) -> TuningRecord:
    """Where ``tune_layers`` times an artifact of ``fmt``: its runtime and device, and the batch."""
    runtime = f"onnxruntime {_onnx_providers()[0]}" if fmt == "onnx" else f"torchscript {_torch_device().type}"
    return TuningRecord(runtime=runtime, batch=batch)


def _onnx_providers() -> list[str]:
    import onnxruntime as ort

    gpu = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]


def _torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _time_candidates(
    layer: FixedSpectrum, options: Sequence[str], fmt: str, batch: int, fp16: bool
) -> dict[str, float]:
    example = torch.randn(batch, layer.spectrum.shape[0], layer.size, layer.size)
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for option in options:
            module = in_precision(nn.Sequential(lower_layer(copy.deepcopy(layer), option)), fp16).eval()
            if fmt == "onnx":
                runners[option] = _onnx_runner(module, example, Path(tmp) / f"{option}.onnx")
            else:
                runners[option] = _torchscript_runner(module, example)
        return _interleaved_medians(runners)


def _interleaved_medians(runners: dict[str, Callable[[], object]]) -> dict[str, float]:
    for run in runners.values():
        for _ in range(WARMUP_RUNS):
            run()
    samples: dict[str, list[float]] = {option: [] for option in runners}
    for _ in range(ROUNDS):
        for option, run in runners.items():
            times = []
            for _ in range(RUNS_PER_ROUND):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            samples[option].append(min(times))
    return {option: round(statistics.median(times) * 1e3, 3) for option, times in samples.items()}


def _onnx_runner(module: nn.Module, example: torch.Tensor, path: Path) -> Callable[[], object]:
    import onnxruntime as ort

    write_onnx(module, example[:2], path, "matmul", None)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=_onnx_providers())
    feed = {INPUT_NAME: example.numpy()}
    return lambda: session.run(None, feed)


def _torchscript_runner(module: nn.Module, example: torch.Tensor) -> Callable[[], object]:
    device = _torch_device()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module).to(device)
    x = example.to(device)

    def run() -> object:
        with torch.no_grad():
            out = scripted(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return run
