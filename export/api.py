"""``export_model`` / ``export_checkpoint``: bake, lower, write, prove parity, then commit the folder."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import niff
from niff_export.artifacts import INPUT_NAME, OUTPUT_NAME, sha256, write_onnx, write_torchscript
from niff_export.bake import bake
from niff_export.errors import ExportError
from niff_export.images import sample_photos
from niff_export.labels import resolve_labels
from niff_export.lowering import LOWERINGS, lower
from niff_export.parity import FP16_TOLERANCE, FP32_TOLERANCE, ParityReport, compare, parity_inputs
from niff_export.precision import in_precision
from niff_export.repository import FORMAT_VERSION, MODEL_FILES, StagingFolder, check_name, config_pbtxt, jsonable
from niff_export.tuning import default_choices, tune_layers

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
DEFAULT_LOWERING = {"onnx": "matmul", "torchscript": "torch"}
MIN_SIZE = 8
# Batch at which --tune times the spectral layers (capped by the model's max batch size).
TUNE_BATCH = 8

# Called with (stage description, None) when a stage starts and (description, seconds) when it ends.
Progress = Callable[[str, "float | None"], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: dict[str, Any]
    parity: ParityReport
    timings: dict[str, float] = field(default_factory=dict)


def lowering_for(fmt: str, fft: str | None) -> str:
    """What ``--fft`` means per format: ONNX has ``matmul`` or ``dft``; TorchScript ``matmul`` or ``torch``.

    ``dft`` and ``torch`` both keep the FFTs (as ONNX ``DFT`` ops, or as torch.fft in TorchScript).
    """
    if fft is None:
        return DEFAULT_LOWERING[fmt]
    if fft not in LOWERINGS:
        raise ExportError(f"unknown --fft {fft!r}; choose one of {', '.join(LOWERINGS)}")
    if fft == "matmul":
        return "matmul"
    return "dft" if fmt == "onnx" else "torch"


@contextlib.contextmanager
def _stage(progress: Progress | None, timings: dict[str, float], message: str) -> Iterator[None]:
    if progress:
        progress(message, None)
    start = time.perf_counter()
    yield
    timings[message] = time.perf_counter() - start
    if progress:
        progress(message, timings[message])


def _check_request(size: int, formats: Sequence[str], max_batch_size: int) -> list[str]:
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ExportError(f"--size must be an integer of at least {MIN_SIZE}, got {size}")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if max_batch_size < 1:
        raise ExportError(f"--max-batch-size must be positive, got {max_batch_size}")
    return list(dict.fromkeys(formats))


def _versions() -> dict[str, str]:
    from importlib import metadata

    names = {
        "niff": "niff-deploy",
        "torch": "torch",
        "onnx": "onnx",
        "onnxscript": "onnxscript",
        "onnxruntime": "onnxruntime",
    }
    found = {}
    for key, dist in names.items():
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[key] = metadata.version(dist)
    return found


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])


def _torchscript_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    module = torch.jit.load(str(path), map_location="cpu")

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(batch)

    return run


def export_model(
    model: nn.Module,
    size: int,
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    *,
    formats: Sequence[str] = FORMATS,
    fft: str | None = None,
    fp16: bool = False,
    labels: Sequence[str] | None = None,
    opset: int | None = None,
    max_batch_size: int = 64,
    version: int = 1,
    checkpoint: str | os.PathLike[str] | None = None,
    tune: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a NIFF model at ``size``×``size`` into ``out_dir/<name>/``; nothing final is written unless parity holds.

    ``model`` should come from ``niff.create_model``/``niff.load_checkpoint`` (its ``niff_spec`` gives
    the preprocessing and the default name); any fx-traceable model built from niff layers works.
    ``tune`` times each spectral layer's candidate lowerings on this machine and keeps the fastest;
    otherwise a default table applies. Each artifact's ``spectral_layers`` in niff.json records the choice.
    """
    formats = _check_request(size, formats, max_batch_size)
    spec = getattr(model, "niff_spec", None)
    name = check_name(name or (spec.arch if spec and spec.arch else f"{type(model).__name__.lower()}_{size}"))
    num_classes = spec.num_classes if spec else int(model(torch.zeros(1, 3, size, size)).shape[1])
    label_list = resolve_labels(num_classes, list(labels) if labels is not None else (spec.labels if spec else None))
    preprocessing = (spec.preprocessing if spec else niff.Preprocessing()).with_size(size)
    lowerings = {fmt: lowering_for(fmt, fft) for fmt in formats}
    timings: dict[str, float] = {}
    model = model.eval()
    staging = StagingFolder(Path(out_dir), name)
    try:
        with _stage(progress, timings, f"Baking filters at {size}x{size}"):
            baked = bake(model, size)
        artifacts: dict[str, dict[str, Any]] = {}
        for fmt in formats:
            lowering = lowerings[fmt]
            if tune:
                with _stage(progress, timings, f"Tuning the spectral layers for {fmt}"):
                    choices = tune_layers(baked, fmt, lowering, batch=min(TUNE_BATCH, max_batch_size), fp16=fp16)
            else:
                choices = default_choices(baked, lowering)
            with _stage(progress, timings, f"Writing {fmt} ({lowering} lowering{', fp16' if fp16 else ''})"):
                per_layer = {choice.layer: choice.lowering for choice in choices}
                family = "matmul" if lowering == "matmul" else "torch"
                module = in_precision(lower(copy.deepcopy(baked), family, per_layer), fp16)
                target = staging.path / "1" / MODEL_FILES[fmt]
                info = (
                    write_onnx(module, torch.randn(2, 3, size, size), target, lowering, opset)
                    if fmt == "onnx"
                    else write_torchscript(module, target)
                )
                artifacts[fmt] = {
                    "path": f"1/{MODEL_FILES[fmt]}",
                    "lowering": lowering,
                    "fp16": fp16,
                    **info,
                    "spectral_layers": [choice.to_dict() for choice in choices],
                }
        with _stage(progress, timings, "Checking parity with eager PyTorch"):
            report = _parity(model, baked, staging.path, formats, size, preprocessing, fp16)
        if not report.passed:
            raise ExportError(f"parity check failed; nothing was written.\n{report.table()}")
        for fmt in formats:
            artifacts[fmt]["sha256"] = sha256(staging.path / artifacts[fmt]["path"])
        metadata = _metadata(
            name, version, spec, model, num_classes, size, preprocessing, max_batch_size, artifacts, report, checkpoint
        )
        staging.write_text("labels.txt", "\n".join(label_list) + "\n")
        staging.write_text("config.pbtxt", config_pbtxt(name, formats, size, num_classes, max_batch_size))
        staging.write_json("niff.json", metadata)
        path = staging.commit()
    except BaseException:
        staging.discard()
        raise
    return ExportResult(path, metadata, report, timings)


def _parity(
    model: nn.Module,
    baked: nn.Module,
    folder: Path,
    formats: list[str],
    size: int,
    preprocessing: niff.Preprocessing,
    fp16: bool,
) -> ParityReport:
    precision = "fp16" if fp16 else "fp32"
    runners = {
        f"{fmt} ({precision})": (_onnx_runner if fmt == "onnx" else _torchscript_runner)(
            folder / "1" / MODEL_FILES[fmt]
        )
        for fmt in formats
    }
    rows = []
    for inputs, batch in parity_inputs(size, sample_photos(preprocessing)).items():
        with torch.no_grad():
            reference = model(batch)
            rows.append(compare("baked (torch)", inputs, reference, baked(batch)))
        rows += [compare(candidate, inputs, reference, run(batch)) for candidate, run in runners.items()]
    return ParityReport(tuple(rows), FP16_TOLERANCE if fp16 else FP32_TOLERANCE)


def _metadata(
    name: str,
    version: int,
    spec: Any,
    model: nn.Module,
    num_classes: int,
    size: int,
    preprocessing: niff.Preprocessing,
    max_batch_size: int,
    artifacts: dict[str, dict[str, Any]],
    report: ParityReport,
    checkpoint: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "arch": spec.arch if spec else None,
        "builder": spec.builder if spec else type(model).__name__,
        "arch_kwargs": jsonable(spec.arch_kwargs) if spec else {},
        "num_classes": num_classes,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [3, size, size], "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [num_classes]},
        "preprocessing": preprocessing.to_dict(),
        "labels_file": "labels.txt",
        "max_batch_size": max_batch_size,
        "artifacts": artifacts,
        "parity": report.to_dict(),
        "checkpoint": {"file": os.path.basename(checkpoint), "sha256": sha256(Path(checkpoint))}
        if checkpoint
        else None,
        "versions": _versions(),
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    size: int,
    out_dir: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    ema: bool = False,
    name: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> ExportResult:
    """Load a checkpoint (``niff.load_checkpoint`` rules) and export it; see ``export_model`` for ``options``."""
    timings: dict[str, float] = {}
    with _stage(progress, timings, "Loading checkpoint"):
        try:
            model = niff.load_checkpoint(
                checkpoint, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, ema=ema
            )
        except niff.CheckpointError as exc:
            raise ExportError(str(exc)) from None
    if name is None and model.niff_spec.arch is None:
        name = Path(checkpoint).stem
    result = export_model(model, size, out_dir, name, checkpoint=checkpoint, progress=progress, **options)
    return ExportResult(result.path, result.metadata, result.parity, {**timings, **result.timings})
