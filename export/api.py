"""``export_model`` / ``export_checkpoint``: plan, build, verify, write — nothing lands unless parity holds.

- plan: check the request, resolve the name, labels, preprocessing and lowerings, measure what a compact
  export would compact;
- build: bake the filters, compact, lower and write every artifact into a staging folder;
- verify: compare eager, baked and every artifact (and a compact model's agreement) on the gate inputs;
- write: the model folder's records from the contract, then move the staging folder into place.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
    REPORT_DIR,
    TRITON_PLATFORMS,
    ArtifactRecord,
    CheckpointRecord,
    Manifest,
    ReportRecord,
    TensorSpec,
    config_text,
    describe_errors,
    labels_text,
    model_config,
    sha256_file,
)
from niff_export.artifacts import DEFAULT_OPSET, write_onnx, write_torchscript
from niff_export.bake import bake
from niff_export.compact import CompactPlan, CompactRequest, compact_model, onnx_opset, plan_compaction
from niff_export.errors import ExportError
from niff_export.images import CalibrationImages, calibration_images, sample_photos
from niff_export.labels import resolve_labels
from niff_export.lowering import LOWERINGS, lower
from niff_export.parity import (
    AccuracyDrop,
    AgreementReport,
    ParityReport,
    check_tolerance,
    compare,
    float64_drift,
    parity_inputs,
    parity_report,
)
from niff_export.precision import in_precision
from niff_export.repository import SharedFields, StagingFolder, check_name, jsonable
from niff_export.runtimes import gate_runtimes, resolve_target, runner, runtime_label, wrap_padding
from niff_export.tuning import default_choices, tune_layers, tuning_record

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
DEFAULT_LOWERING = {"onnx": "matmul", "torchscript": "torch"}
MIN_SIZE = 8
MAX_BATCH_DELAY_MS = 60_000
# What each preprocessing field is called on the command line.
_PREPROCESSING_OPTIONS = {"input_size": "--size", "crop_pct": "--crop-pct", "interpolation": "--interpolation"}
# Gate inputs run through the models in chunks of this many images (a calibration folder may be large).
GATE_CHUNK = 32
# Batch at which --tune times the spectral layers (capped by the model's max batch size).
TUNE_BATCH = 8

# Called with (stage description, None) when a stage starts and (description, seconds) when it ends.
Progress = Callable[[str, "float | None"], None]


@dataclass(frozen=True)
class ExportOptions:
    """Everything an export may be asked besides the model, its input size and where it goes.

    ``preprocessing`` overrides fields of the model's preprocessing (timm's names: ``interpolation``,
    ``crop_pct``, ``mean``, ``std``). ``max_batch_size`` and ``max_batch_delay_ms`` go into config.pbtxt,
    where niff-serve takes its batching values from. ``compact`` makes a compact export: the artifacts
    then reproduce the compact model exactly, and its approximation is gated (``CompactRequest``: on the
    accuracy drop on labelled calibration images, else on agreement). ``tune``
    times each spectral layer's candidate lowerings on this machine's runtime and keeps the fastest;
    otherwise a default table applies. Each artifact's ``spectral_layers`` in niff.json records the choice.
    ``report`` writes niff-report's kernel report into the folder's ``report/`` (needs matplotlib, the
    ``report`` extra), where niff-serve's page shows it. ``parity_tolerance`` replaces the gate's relative
    tolerance (1e-4; 1e-2 with ``fp16``) for an ill-conditioned model; niff.json records it with the eager
    model's measured float32-vs-float64 drift.

    ``target`` says where the ONNX file is meant to run (``runtimes.TARGETS``): by default ``portable``, forms
    every supported runtime reads, checked by the gate in ONNX Runtime and, when installed, in OpenVINO;
    ``onnxruntime`` takes ONNX Runtime's fastest forms (``--fft dft``'s default: OpenVINO misreads DFT ops).

    ``version`` goes into ``<name>/<version>/``; the other versions in the folder are kept, and config.pbtxt
    lists them all. Replacing an existing version needs ``force``. ``keep_versions`` keeps only the latest N
    versions (the exported one among them) and makes config.pbtxt's policy ``latest { num_versions: N }``.
    """

    formats: Sequence[str] = FORMATS
    fft: str | None = None
    fp16: bool = False
    labels: Sequence[str] | None = None
    opset: int | None = None
    max_batch_size: int = 16
    max_batch_delay_ms: float = DEFAULT_MAX_QUEUE_DELAY_US / 1000
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    version: int = 1
    force: bool = False
    keep_versions: int | None = None
    compact: CompactRequest | None = None
    tune: bool = False
    report: bool = False
    parity_tolerance: float | None = None
    target: str | None = None


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Manifest
    parity: ParityReport
    timings: dict[str, float] = field(default_factory=dict)
    compact: CompactPlan | None = None
    agreement: AgreementReport | None = None
    versions: tuple[int, ...] = ()  # every version in the folder now
    removed_versions: tuple[int, ...] = ()  # versions that --keep-versions removed


@dataclass(frozen=True)
class _Plan:
    """What an export will do, resolved and checked before anything is computed or written."""

    model: nn.Module
    size: int
    name: str
    options: ExportOptions
    formats: tuple[str, ...]
    num_classes: int
    labels: list[str]
    preprocessing: niff.Preprocessing
    lowerings: dict[str, str]
    compact: CompactPlan | None
    calibration: CalibrationImages | None
    target: str
    runtimes: dict[str, tuple[str, ...]]  # per format, the runtimes the gate runs its artifact in


@dataclass(frozen=True)
class _Built:
    baked: nn.Module
    deployed: nn.Module
    artifacts: dict[str, dict[str, Any]]


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


def installed_versions() -> dict[str, str]:
    """Versions of this project and the libraries an export depends on (recorded in niff.json)."""
    from importlib import metadata

    names = {
        "niff": "niff-deploy",
        "torch": "torch",
        "onnx": "onnx",
        "onnxscript": "onnxscript",
        "onnxruntime": "onnxruntime",
        "openvino": "openvino",
    }
    found = {}
    for key, dist in names.items():
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[key] = metadata.version(dist)
    return found


def export_model(
    model: nn.Module,
    size: int,
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    options: ExportOptions | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    **fields: Any,
) -> ExportResult:
    """Export a NIFF model at ``size``×``size`` into ``out_dir/<name>/``; nothing final is written unless parity holds.

    ``model`` should come from ``niff.create_model``/``niff.load_checkpoint`` (its ``niff_spec`` gives
    the preprocessing and the default name); any fx-traceable model built from niff layers works.
    ``fields`` are :class:`ExportOptions` fields, a shorthand for ``options``.
    """
    options = replace(options or ExportOptions(), **fields)
    if options.report:
        from niff_export.report.figures import require_matplotlib  # the report extra, only when asked

        require_matplotlib()  # before hours of export, not after
    timings: dict[str, float] = {}
    plan = _plan(model.eval(), size, name, options, progress, timings)
    staging = StagingFolder(
        Path(out_dir),
        plan.name,
        options.version,
        force=options.force,
        keep_versions=options.keep_versions,
        shared=_shared_fields(plan),
    )
    try:
        built = _build(plan, staging, progress, timings)
        with _stage(progress, timings, "Checking parity with eager PyTorch"):
            report, agreement = _verify(plan, built, staging.path / staging.version_dir)
        kernel_report = _write_report(plan, staging, progress, timings) if options.report else None
        manifest = _write(plan, built, staging, report, agreement, checkpoint, kernel_report)
        path = staging.commit()
    except BaseException:
        staging.discard()
        raise
    return ExportResult(
        path,
        manifest,
        report,
        timings,
        plan.compact,
        agreement,
        versions=staging.versions,
        removed_versions=staging.removed,
    )


def _plan(
    model: nn.Module,
    size: int,
    name: str | None,
    options: ExportOptions,
    progress: Progress | None,
    timings: dict[str, float],
) -> _Plan:
    check_size(size)
    formats = tuple(dict.fromkeys(options.formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if options.max_batch_size < 1:
        raise ExportError(f"--max-batch-size must be positive, got {options.max_batch_size}")
    if not 0 <= options.max_batch_delay_ms <= MAX_BATCH_DELAY_MS:
        raise ExportError(
            f"--max-batch-delay-ms must be between 0 and {MAX_BATCH_DELAY_MS}, got {options.max_batch_delay_ms}"
        )
    check_tolerance(options.parity_tolerance)
    lowerings = {fmt: lowering_for(fmt, options.fft) for fmt in formats}
    target = resolve_target(options.target, lowerings.get("onnx"))
    spec = getattr(model, "niff_spec", None)
    name = check_name(name or (spec.arch if spec and spec.arch else f"{type(model).__name__.lower()}_{size}"))
    num_classes = spec.num_classes if spec else int(model(torch.zeros(1, 3, size, size)).shape[1])
    given = list(options.labels) if options.labels is not None else (spec.labels if spec else None)
    preprocessing = planned_preprocessing(model, size, options.preprocessing)
    labels = resolve_labels(num_classes, given)
    compact, calibration = None, None
    if options.compact is not None:
        with _stage(progress, timings, f"Measuring kernels at {size}x{size} for compaction"):
            compact = plan_compaction(model, size, options.compact)
            if options.compact.calibration is not None:
                calibration = calibration_images(Path(options.compact.calibration), preprocessing, labels)
                options.compact.check_calibration(labelled=calibration.labels is not None)
    return _Plan(
        model=model,
        size=size,
        name=name,
        options=options,
        formats=formats,
        num_classes=num_classes,
        labels=labels,
        preprocessing=preprocessing,
        lowerings=lowerings,
        compact=compact,
        calibration=calibration,
        target=target,
        runtimes={fmt: gate_runtimes(fmt, target) for fmt in formats},
    )


def planned_preprocessing(model: nn.Module, size: int, overrides: Mapping[str, Any]) -> niff.Preprocessing:
    """The preprocessing an export of ``model`` at ``size`` records: the model's own (``niff_spec``; ImageNet's
    defaults without one) at ``size``, with ``overrides`` (``ExportOptions.preprocessing``), validated."""
    spec = getattr(model, "niff_spec", None)
    base = spec.preprocessing if spec else niff.Preprocessing()
    try:
        return base.updated(**overrides, input_size=size)
    except ValidationError as exc:
        name_of = lambda field: _PREPROCESSING_OPTIONS.get(field, f"--{field}")  # noqa: E731
        raise ExportError(f"invalid preprocessing: {describe_errors(exc.errors(), name_of)}") from None


def _shared_fields(plan: _Plan) -> SharedFields:
    """What the exported version will say for the whole folder (checked against the versions it joins)."""
    return SharedFields(
        platform=TRITON_PLATFORMS["onnx" if "onnx" in plan.formats else "torchscript"],
        input_shape=(3, plan.size, plan.size),
        num_classes=plan.num_classes,
        labels_sha256=hashlib.sha256(labels_text(plan.labels).encode()).hexdigest(),
        preprocessing=plan.preprocessing,
    )


def _build(plan: _Plan, staging: StagingFolder, progress: Progress | None, timings: dict[str, float]) -> _Built:
    """Bake, compact and lower the model, and write every artifact into the staging folder."""
    size, fp16 = plan.size, plan.options.fp16
    with _stage(progress, timings, f"Baking filters at {size}x{size}"):
        baked = bake(plan.model, size)
        deployed = baked if plan.compact is None else compact_model(baked, plan.compact, wrap_padding(plan.target))
    artifacts: dict[str, dict[str, Any]] = {}
    for fmt in plan.formats:
        lowering, tuning = plan.lowerings[fmt], None
        if plan.options.tune:
            tuning = tuning_record(fmt, min(TUNE_BATCH, plan.options.max_batch_size))
            with _stage(progress, timings, f"Tuning the spectral layers for {fmt}"):
                choices = tune_layers(deployed, fmt, lowering, batch=tuning.batch, fp16=fp16)
        else:
            choices = default_choices(deployed, lowering)
        with _stage(progress, timings, f"Writing {fmt} ({lowering} lowering{', fp16' if fp16 else ''})"):
            family = "matmul" if lowering == "matmul" else "torch"
            per_layer = {choice.layer: choice.lowering for choice in choices}
            module = in_precision(lower(copy.deepcopy(deployed), family, per_layer), fp16)
            relative = f"{staging.version_dir}/{MODEL_FILES[fmt]}"
            if fmt == "onnx":
                opset = onnx_opset(plan.compact, plan.options.opset, DEFAULT_OPSET[lowering], wrap_padding(plan.target))
                info = write_onnx(module, torch.randn(2, 3, size, size), staging.path / relative, lowering, opset)
            else:
                info = write_torchscript(module, staging.path / relative)
            artifacts[fmt] = {
                "path": relative,
                "lowering": lowering,
                "fp16": fp16,
                **info,
                "tuning": tuning,
                "spectral_layers": tuple(choices),
                "target": plan.target if fmt == "onnx" else None,
                "verified_runtimes": tuple(runtime_label(name) for name in plan.runtimes[fmt]),
            }
    return _Built(baked, deployed, artifacts)


def _verify(plan: _Plan, built: _Built, folder: Path) -> tuple[ParityReport, AgreementReport | None]:
    """Artifacts against the model they implement; with a compact plan, also the compact model's agreement.

    The exact baked model is always held to eager; the artifacts of a compact export are held to the
    compact model (rows marked "vs compact"), whose approximation is gated instead on the user's calibration
    images (accuracy drop when labelled, else agreement) or, without them, on agreement on the photos.
    Raises (nothing is written) when either gate fails.
    """
    precision = "fp16" if plan.options.fp16 else "fp32"
    suffix = "" if plan.compact is None else " vs compact"
    runners = {
        _candidate(fmt, precision, runtime, suffix): runner(runtime, folder / MODEL_FILES[fmt])
        for fmt in plan.formats
        for runtime in plan.runtimes[fmt]
    }
    inputs = parity_inputs(plan.size, sample_photos(plan.preprocessing))
    if plan.calibration is not None:
        inputs["calibration"] = plan.calibration.images
    rows, agreement_rows, references, accuracy = [], [], {}, None
    for name, batch in inputs.items():
        with torch.no_grad():
            reference = references[name] = _chunked(plan.model, batch)
            exact = _chunked(built.baked, batch)
            rows.append(compare("baked (torch)", name, reference, exact))
            target = reference if plan.compact is None else _chunked(built.deployed, batch)
        if plan.compact is not None:
            agreement_rows += [compare("compact vs eager", name, reference, target)]
            agreement_rows += [compare("compact vs exact", name, exact, target)]
            if name == "calibration" and plan.calibration.labels is not None:
                drop = plan.compact.request.max_accuracy_drop
                accuracy = AccuracyDrop.measure(plan.calibration.labels, exact, target, drop)
        rows += [compare(candidate, name, target, _chunked(run, batch)) for candidate, run in runners.items()]
    drift = lambda: float64_drift(plan.model, inputs, references, GATE_CHUNK)  # noqa: E731
    report = parity_report(tuple(rows), plan.options.fp16, plan.options.parity_tolerance, drift)
    if not report.passed:
        raise ExportError(f"parity check failed; nothing was written.\n{report.table()}")
    if plan.compact is None:
        return report, None
    agreement = AgreementReport(tuple(agreement_rows), plan.compact.request.min_agreement, accuracy)
    if not agreement.passed:
        raise ExportError(plan.compact.gate_failure(agreement))
    return report, agreement


def _chunked(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    return torch.cat([run(chunk) for chunk in batch.split(GATE_CHUNK)])


def _candidate(fmt: str, precision: str, runtime: str, suffix: str) -> str:
    """A parity row's candidate: "onnx (fp32)" for each format's own runtime, "onnx (fp32) openvino" for another."""
    other = "" if runtime in ("onnxruntime", "torch") else f" {runtime}"
    return f"{fmt} ({precision}){other}{suffix}"


def _write(
    plan: _Plan,
    built: _Built,
    staging: StagingFolder,
    report: ParityReport,
    agreement: AgreementReport | None,
    checkpoint: str | os.PathLike[str] | None,
    kernel_report: ReportRecord | None,
) -> Manifest:
    """niff.json, config.pbtxt and labels.txt from the contract's records, into the staging folder.

    niff.json records the sha256 of each file it names, the labels file's as the artifacts'.
    """
    options, spec = plan.options, getattr(plan.model, "niff_spec", None)
    staging.write_text(LABELS_FILE, labels_text(plan.labels))
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=plan.name,
        version=options.version,
        arch=spec.arch if spec else None,
        builder=spec.builder if spec else type(plan.model).__name__,
        arch_kwargs=jsonable(spec.arch_kwargs) if spec else {},
        num_classes=plan.num_classes,
        input=TensorSpec(name=INPUT_NAME, shape=(3, plan.size, plan.size), layout="NCHW"),
        output=TensorSpec(name=OUTPUT_NAME, shape=(plan.num_classes,)),
        preprocessing=plan.preprocessing,
        labels_file=LABELS_FILE,
        labels_sha256=sha256_file(staging.path / LABELS_FILE),
        max_batch_size=options.max_batch_size,
        artifacts={
            fmt: ArtifactRecord(**artifact, sha256=sha256_file(staging.path / artifact["path"]))
            for fmt, artifact in built.artifacts.items()
        },
        parity=report.record(),
        report=kernel_report,
        checkpoint=CheckpointRecord(file=os.path.basename(checkpoint), sha256=sha256_file(checkpoint))
        if checkpoint
        else None,
        versions=installed_versions(),
        created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        compact=None
        if plan.compact is None or agreement is None
        else plan.compact.record(agreement, None if plan.calibration is None else len(plan.calibration)),
    )
    config = model_config(
        manifest,
        round(options.max_batch_delay_ms * 1000),
        versions=staging.versions,
        latest=options.keep_versions,
    )
    staging.write_text("config.pbtxt", config_text(config))
    staging.write_text("niff.json", manifest.to_json())
    return manifest


def _write_report(
    plan: _Plan, staging: StagingFolder, progress: Progress | None, timings: dict[str, float]
) -> ReportRecord:
    """niff-report's kernel report of the exported model, in the staging folder's ``report/``."""
    from niff_export.report.api import report_model  # the report extra (matplotlib): imported only when asked

    with _stage(progress, timings, "Writing the kernel report"):
        result = report_model(plan.model, plan.size, staging.path / REPORT_DIR, plan.name)
    return ReportRecord(files={path.name: sha256_file(path) for path in result.files})


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    size: int,
    out_dir: str | os.PathLike[str],
    options: ExportOptions | None = None,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    ema: bool = False,
    name: str | None = None,
    progress: Progress | None = None,
    **fields: Any,
) -> ExportResult:
    """Load a checkpoint (``niff.load_checkpoint`` rules) and export it; see ``export_model`` for the options."""
    check_size(size)
    timings: dict[str, float] = {}
    with _stage(progress, timings, "Loading checkpoint"):
        model = load_model(checkpoint, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, ema=ema)
    if name is None and model.niff_spec.arch is None:
        name = Path(checkpoint).stem
    result = export_model(model, size, out_dir, name, options, checkpoint=checkpoint, progress=progress, **fields)
    return replace(result, timings={**timings, **result.timings})


def load_model(
    checkpoint: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    ema: bool = False,
) -> nn.Module:
    """``niff.load_checkpoint`` with its errors as ExportError, naming a checkpoint that holds no NIFF layers.

    A ``niff.CheckpointError`` becomes an ExportError whose ``__cause__`` it is (its ``option`` says which
    argument would resolve it).
    """
    try:
        return niff.load_checkpoint(checkpoint, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, ema=ema)
    except niff.CheckpointError as exc:
        not_niff = _without_niff_layers(checkpoint, trust_pickle, ema)
        if not_niff is not None:
            raise ExportError(not_niff) from None
        raise ExportError(str(exc)) from exc


def _without_niff_layers(checkpoint: str | os.PathLike[str], trust_pickle: bool, ema: bool) -> str | None:
    """Why a checkpoint that failed to load is not a NIFF model, when its weights have no frequency-filter MLPs."""
    try:
        state_dict = niff.extract_state_dict(niff.read_checkpoint(checkpoint, trust_pickle), ema)
    except niff.CheckpointError:
        return None
    if any(part in ("mlp_real", "mlp_imag", "mlp") for key in state_dict for part in key.split(".")):
        return None
    return (
        f"{os.fspath(checkpoint)} holds no NIFF layers (no frequency-filter weights 'mlp_real', 'mlp_imag' or "
        "'mlp'): it is not a NIFF checkpoint"
    )
