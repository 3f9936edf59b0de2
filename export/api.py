"""``export_model`` / ``export_checkpoint``: bake, lower, write, prove parity, then commit the folder."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

import niff
from niff_contract import (
    DEFAULT_MAX_QUEUE_DELAY_US,
    FORMAT_VERSION,
    INPUT_NAME,
    LABELS_FILE,
    MODEL_FILES,
    OUTPUT_NAME,
    ArtifactRecord,
    CheckpointRecord,
    Manifest,
    TensorSpec,
    config_text,
    describe_errors,
    labels_text,
    model_config,
    sha256_file,
)
from niff_export.artifacts import write_onnx, write_torchscript
from niff_export.bake import bake
from niff_export.errors import ExportError
from niff_export.images import sample_photos
from niff_export.labels import resolve_labels
from niff_export.lowering import LOWERINGS, lower
from niff_export.parity import FP16_TOLERANCE, FP32_TOLERANCE, ParityReport, compare, parity_inputs
from niff_export.precision import in_precision
from niff_export.repository import StagingFolder, check_name, jsonable

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
DEFAULT_LOWERING = {"onnx": "matmul", "torchscript": "torch"}
MIN_SIZE = 8
MAX_BATCH_DELAY_MS = 60_000
# What each preprocessing field is called on the command line.
_PREPROCESSING_OPTIONS = {"input_size": "--size", "crop_pct": "--crop-pct", "interpolation": "--interpolation"}

# Called with (stage description, None) when a stage starts and (description, seconds) when it ends.
Progress = Callable[[str, "float | None"], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
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


def check_size(size: int) -> int:
    """The one check of the input size, for the Python API and ``niff-export --size`` alike."""
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ExportError(f"the input size must be an integer of at least {MIN_SIZE} pixels, got {size!r}")
    return size


def _check_request(size: int, formats: Sequence[str], max_batch_size: int, max_batch_delay_ms: float) -> list[str]:
    check_size(size)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if max_batch_size < 1:
        raise ExportError(f"--max-batch-size must be positive, got {max_batch_size}")
    if not 0 <= max_batch_delay_ms <= MAX_BATCH_DELAY_MS:
        raise ExportError(f"--max-batch-delay-ms must be between 0 and {MAX_BATCH_DELAY_MS}, got {max_batch_delay_ms}")
    return list(dict.fromkeys(formats))


def _preprocessing(base: niff.Preprocessing, size: int, overrides: Mapping[str, Any]) -> niff.Preprocessing:
    """The model's preprocessing at ``size`` with ``overrides``, validated by the contract."""
    try:
        return base.updated(**overrides, input_size=size)
    except ValidationError as exc:
        name_of = lambda field: _PREPROCESSING_OPTIONS.get(field, f"--{field}")  # noqa: E731
        raise ExportError(f"invalid preprocessing: {describe_errors(exc.errors(), name_of)}") from None


def installed_versions() -> dict[str, str]:
    """Versions of this project and the libraries an export depends on (recorded in niff.json)."""
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
    max_batch_size: int = 16,
    max_batch_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_US / 1000,
    preprocessing: Mapping[str, Any] | None = None,
    version: int = 1,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export a NIFF model at ``size``×``size`` into ``out_dir/<name>/``; nothing final is written unless parity holds.

    ``model`` should come from ``niff.create_model``/``niff.load_checkpoint`` (its ``niff_spec`` gives
    the preprocessing and the default name); any fx-traceable model built from niff layers works.
    ``preprocessing`` overrides fields of the model's preprocessing (timm's names: ``interpolation``,
    ``crop_pct``, ``mean``, ``std``). ``max_batch_size`` and ``max_batch_delay_ms`` go into config.pbtxt,
    where niff-serve takes its batching values from.
    """
    formats = _check_request(size, formats, max_batch_size, max_batch_delay_ms)
    spec = getattr(model, "niff_spec", None)
    name = check_name(name or (spec.arch if spec and spec.arch else f"{type(model).__name__.lower()}_{size}"))
    num_classes = spec.num_classes if spec else int(model(torch.zeros(1, 3, size, size)).shape[1])
    label_list = resolve_labels(num_classes, list(labels) if labels is not None else (spec.labels if spec else None))
    recipe = _preprocessing(spec.preprocessing if spec else niff.Preprocessing(), size, preprocessing or {})
    lowerings = {fmt: lowering_for(fmt, fft) for fmt in formats}
    timings: dict[str, float] = {}
    model = model.eval()
    staging = StagingFolder(Path(out_dir), name, version)
    try:
        with _stage(progress, timings, f"Baking filters at {size}x{size}"):
            baked = bake(model, size)
        artifacts: dict[str, dict[str, Any]] = {}
        for fmt in formats:
            lowering = lowerings[fmt]
            with _stage(progress, timings, f"Writing {fmt} ({lowering} lowering{', fp16' if fp16 else ''})"):
                module = in_precision(lower(copy.deepcopy(baked), "matmul" if lowering == "matmul" else "torch"), fp16)
                relative = f"{staging.version_dir}/{MODEL_FILES[fmt]}"
                info = (
                    write_onnx(module, torch.randn(2, 3, size, size), staging.path / relative, lowering, opset)
                    if fmt == "onnx"
                    else write_torchscript(module, staging.path / relative)
                )
                artifacts[fmt] = {"path": relative, "lowering": lowering, "fp16": fp16, **info}
        with _stage(progress, timings, "Checking parity with eager PyTorch"):
            report = _parity(model, baked, staging.path / staging.version_dir, formats, size, recipe, fp16)
        if not report.passed:
            raise ExportError(f"parity check failed; nothing was written.\n{report.table()}")
        records = {
            fmt: ArtifactRecord(**artifact, sha256=sha256_file(staging.path / artifact["path"]))
            for fmt, artifact in artifacts.items()
        }
        manifest = _manifest(
            name, version, spec, model, num_classes, size, recipe, max_batch_size, records, report, checkpoint
        )
        staging.write_text(LABELS_FILE, labels_text(label_list))
        staging.write_text("config.pbtxt", config_text(model_config(manifest, round(max_batch_delay_ms * 1000))))
        staging.write_text("niff.json", manifest.to_json())
        path = staging.commit()
    except BaseException:
        staging.discard()
        raise
    return ExportResult(path, manifest, report, timings)


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
        f"{fmt} ({precision})": (_onnx_runner if fmt == "onnx" else _torchscript_runner)(folder / MODEL_FILES[fmt])
        for fmt in formats
    }
    rows = []
    for inputs, batch in parity_inputs(size, sample_photos(preprocessing)).items():
        with torch.no_grad():
            reference = model(batch)
            rows.append(compare("baked (torch)", inputs, reference, baked(batch)))
        rows += [compare(candidate, inputs, reference, run(batch)) for candidate, run in runners.items()]
    return ParityReport(tuple(rows), FP16_TOLERANCE if fp16 else FP32_TOLERANCE)


def _manifest(
    name: str,
    version: int,
    spec: Any,
    model: nn.Module,
    num_classes: int,
    size: int,
    preprocessing: niff.Preprocessing,
    max_batch_size: int,
    artifacts: dict[str, ArtifactRecord],
    report: ParityReport,
    checkpoint: str | os.PathLike[str] | None,
) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        version=version,
        arch=spec.arch if spec else None,
        builder=spec.builder if spec else type(model).__name__,
        arch_kwargs=jsonable(spec.arch_kwargs) if spec else {},
        num_classes=num_classes,
        input=TensorSpec(name=INPUT_NAME, shape=(3, size, size), layout="NCHW"),
        output=TensorSpec(name=OUTPUT_NAME, shape=(num_classes,)),
        preprocessing=preprocessing,
        max_batch_size=max_batch_size,
        artifacts=artifacts,
        parity=report.record(),
        checkpoint=CheckpointRecord(file=os.path.basename(checkpoint), sha256=sha256_file(checkpoint))
        if checkpoint
        else None,
        versions=installed_versions(),
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


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
    """Load a checkpoint (``niff.load_checkpoint`` rules) and export it; see ``export_model`` for ``options``.

    A ``niff.CheckpointError`` becomes an ExportError whose ``__cause__`` it is (its ``option`` says which
    argument would resolve it).
    """
    check_size(size)
    timings: dict[str, float] = {}
    with _stage(progress, timings, "Loading checkpoint"):
        try:
            model = niff.load_checkpoint(
                checkpoint, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, ema=ema
            )
        except niff.CheckpointError as exc:
            raise ExportError(str(exc)) from exc
    if name is None and model.niff_spec.arch is None:
        name = Path(checkpoint).stem
    result = export_model(model, size, out_dir, name, checkpoint=checkpoint, progress=progress, **options)
    return ExportResult(result.path, result.manifest, result.parity, {**timings, **result.timings})
