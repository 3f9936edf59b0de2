"""``export_model`` / ``export_checkpoint``: plan, build, verify, write — nothing lands unless parity holds.

- plan: check the request, resolve the name, labels, preprocessing and lowerings, measure what a compact
  export would compact;
- build: bake the filters, compact, lower and write every artifact into a staging folder;
- verify: compare eager, baked and every artifact (and a compact model's agreement) on the gate inputs;
- write: the model folder's records from the contract, then move the staging folder into place.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import hashlib
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
    INTERPOLATIONS,
    LABELS_FILE,
    MODEL_FILES,
    OUTPUT_NAME,
    REPORT_DIR,
    TRITON_PLATFORMS,
    ArtifactRecord,
    CheckpointRecord,
    Manifest,
    ReportRecord,
    SpectralLayer,
    TensorSpec,
    TuningRecord,
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
from niff_export.labels import read_labels, resolve_labels
from niff_export.lowering import LOWERINGS, lower
from niff_export.options import (
    Option,
    check_fields,
    check_size,
    comma_list,
    count_option,
    flag_of,
    option,
    triple,
)
from niff_export.parity import (
    AccuracyDrop,
    AgreementReport,
    ParityReport,
    compare,
    float64_drift,
    parity_inputs,
    parity_report,
    tolerance_problem,
)
from niff_export.precision import in_precision
from niff_export.repository import SharedFields, StagingFolder, check_name, jsonable
from niff_export.runtimes import TARGETS, gate_runtimes, resolve_target, runner, runtime_label, wrap_padding
from niff_export.spec import resolve_spec
from niff_export.tuning import default_choices, tune_layers, tuning_record

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
DEFAULT_LOWERING = {"onnx": "matmul", "torchscript": "torch"}
MAX_BATCH_DELAY_MS = 60_000
# Gate inputs run through the models in chunks of this many images (a calibration folder may be large).
GATE_CHUNK = 32
# Batch at which --tune times the spectral layers (capped by the model's max batch size).
TUNE_BATCH = 8

# Called when a stage starts, with (description, None, its number, the number of stages), and when it ends, with
# its seconds in place of None.
Progress = Callable[[str, "float | None", int, int], None]


def _formats_problem(formats: Sequence[str]) -> str | None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        given = f"unknown format {', '.join(unknown)}" if unknown else "no format"
        return f"has {given}; choose from {', '.join(FORMATS)}"
    return None


def _delay_problem(delay_ms: float) -> str | None:
    return (
        None if 0 <= delay_ms <= MAX_BATCH_DELAY_MS else f"must be between 0 and {MAX_BATCH_DELAY_MS}, got {delay_ms}"
    )


def _tolerance_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or tolerance_problem(value):
        raise argparse.ArgumentTypeError(f"expected a relative error between 0 and 1, like 1e-3, got {text!r}")
    return value


# ``ExportOptions.preprocessing``'s keys, as options of their own (timm's names; niff.Preprocessing checks them).
_PREPROCESSING_KEYS = (
    (
        "crop_pct",
        Option(
            parse=float, metavar="F", help="center-crop fraction: resize to floor(size / F), then crop (0 < F <= 1)"
        ),
    ),
    ("interpolation", Option(choices=INTERPOLATIONS, help="resize filter for the shorter side (e.g. bicubic)")),
    ("mean", Option(parse=triple, metavar="R,G,B", help="per-channel mean on the [0, 1] scale")),
    ("std", Option(parse=triple, metavar="R,G,B", help="per-channel std on the [0, 1] scale")),
)
# The preprocessing fields an option overrides, and their options (input_size is --size; resize follows).
PREPROCESSING_OPTIONS = {key: flag_of(key, spec) for key, spec in _PREPROCESSING_KEYS}


@dataclass(frozen=True)
class ExportOptions:
    """Everything an export may be asked besides the model, its input size and where it goes.

    Each field's default, help, command-line form and check are declared here once (``options.option``):
    ``niff-export``'s options are generated from these fields and the record checks itself when built.

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

    formats: Sequence[str] = option(
        FORMATS,
        flag="--format",
        metavar="LIST",
        parse=comma_list(_formats_problem),
        check=_formats_problem,
        help="comma-separated artifacts to write: onnx, torchscript (default: {default})",
    )
    fft: str | None = option(
        None,
        choices=LOWERINGS,
        help="how transforms are computed: matmul = DFT as products with precomputed matrices (runs on every "
        "runtime and execution provider); dft = ONNX DFT op (opset >= 20); torch = torch.fft in TorchScript "
        f"(cuFFT on GPU). Default: ONNX {DEFAULT_LOWERING['onnx']}, TorchScript {DEFAULT_LOWERING['torchscript']}",
    )
    tune: bool = option(
        False,
        help="time each spectral layer's candidate lowerings (matmul: separable, paired, kronecker up to 16x16 "
        "maps, and in ONNX separable-per-image and paired-per-image; TorchScript also torch.fft) on this "
        f"machine's runtime at batch {TUNE_BATCH} (or --max-batch-size if smaller) and keep the fastest; "
        "without it a default table measured on ONNX Runtime CPU applies. Choices and timings go into niff.json",
    )
    report: bool = option(
        False,
        help="also write niff-report's kernel report (report.json, figures, report.md) into the model folder's "
        "report/, listed in niff.json; niff-serve's page shows it (needs the report extra: matplotlib)",
    )
    target: str | None = option(
        None,
        choices=TARGETS,
        help="where the ONNX file will run. portable: forms every supported runtime reads (ONNX Runtime, "
        "OpenVINO), checked in each one installed; onnxruntime: ONNX Runtime's fastest forms (a compact "
        "export's circular padding as one Pad mode 'wrap', which OpenVINO refuses), checked there alone; "
        "openvino: portable, and fail unless OpenVINO is installed to check the file. Default: portable "
        "(onnxruntime with --fft dft, whose DFT ops OpenVINO misreads). Only compact exports' files differ; "
        "niff.json records the target and the runtimes (with versions) that ran the file",
    )
    fp16: bool = option(False, help="compute in float16 (inputs and outputs stay float32)")
    parity_tolerance: float | None = option(
        None,
        metavar="T",
        parse=_tolerance_argument,
        check=tolerance_problem,
        help="relative error the parity gate accepts, for an ill-conditioned model whose own float32 output drifts "
        "from float64 (default: 1e-4, with --fp16 1e-2); printed as a warning and recorded in niff.json with the "
        "measured drift. A failing gate says when this applies",
    )
    labels: Sequence[str] | None = option(
        None,
        metavar="FILE",
        parse=Path,
        load=read_labels,
        help="class names, one per line (default: ImageNet names for 1000 classes, else numbers)",
    )
    opset: int | None = count_option(
        None,
        help="ONNX opset (default: 18 for matmul, 20 for dft)",
    )
    max_batch_size: int = count_option(
        16,
        help="largest batch niff-serve forms (config.pbtxt; default: {default}; a server setting may override it)",
    )
    max_batch_delay_ms: float = option(
        DEFAULT_MAX_QUEUE_DELAY_US / 1000,
        metavar="MS",
        parse=float,
        check=_delay_problem,
        help="longest wait for a fuller batch (config.pbtxt's max_queue_delay; default: {default})",
    )
    preprocessing: Mapping[str, Any] = option(
        default_factory=dict,
        keys=_PREPROCESSING_KEYS,
        group=(
            "preprocessing",
            "How the model was trained to be evaluated (timm's names). Each overrides the architecture's default\n"
            "and the checkpoint's own metadata, is recorded in niff.json and followed by niff-serve.",
        ),
    )
    version: int = count_option(
        1,
        flag="--model-version",
        help="model version: the files go into OUT/NAME/N/, as Triton lays out versions (default: {default}). The "
        "folder's other versions are kept and config.pbtxt lists them all; niff.json describes version N, the "
        "one niff-serve serves",
    )
    force: bool = option(
        False, help="replace version N when OUT/NAME/N/ exists (without it, that is an error and nothing is written)"
    )
    keep_versions: int | None = count_option(
        None,
        metavar="K",
        help="keep only the K highest versions in OUT/NAME/ (N among them; older version folders are deleted "
        "once the export succeeds) and write version_policy latest { num_versions: K } into config.pbtxt "
        "(default: keep every version and list each one)",
    )
    compact: CompactRequest | None = option(  # noqa: RUF009 (option is dataclasses.field with metadata)
        None, record=CompactRequest, group=("compact export (approximate, opt-in)", None)
    )

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def stages(self) -> int:
        """How many stages ``export_model`` runs with these options (``export_checkpoint`` adds its loading)."""
        formats = len(dict.fromkeys(self.formats))
        return 2 + formats * (2 if self.tune else 1) + (self.compact is not None) + self.report


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
    spec: niff.ModelSpec
    size: int
    name: str
    options: ExportOptions
    formats: tuple[str, ...]
    labels: list[str]
    preprocessing: niff.Preprocessing
    lowerings: dict[str, str]
    compact: CompactPlan | None
    calibration: CalibrationImages | None
    target: str
    runtimes: dict[str, tuple[str, ...]]  # per format, the runtimes the gate runs its artifact in


@dataclass(frozen=True)
class _Artifact:
    """One written model file, until niff.json records it (with its sha256) as the contract's ArtifactRecord."""

    path: str  # relative to the model folder
    lowering: str
    fp16: bool
    exporter: str
    spectral_layers: tuple[SpectralLayer, ...]
    verified_runtimes: tuple[str, ...]
    opset: int | None = None
    tuning: TuningRecord | None = None
    target: str | None = None

    def record(self, folder: Path) -> ArtifactRecord:
        return ArtifactRecord(**vars(self), sha256=sha256_file(folder / self.path))


@dataclass(frozen=True)
class _Built:
    baked: nn.Module
    deployed: nn.Module
    artifacts: dict[str, _Artifact]


class _Stages:
    """Runs, times and numbers an export's stages for its progress callback, out of a total known up front."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, message: str) -> Iterator[None]:
        self.done += 1
        if self.progress:
            self.progress(message, None, self.done, self.total)
        start = time.perf_counter()
        yield
        self.timings[message] = time.perf_counter() - start
        if self.progress:
            self.progress(message, self.timings[message], self.done, self.total)


def lowering_for(fmt: str, fft: str | None) -> str:
    """What ``--fft`` means per format: ONNX has ``matmul`` or ``dft``; TorchScript ``matmul`` or ``torch``.

    ``dft`` and ``torch`` both keep the FFTs (as ONNX ``DFT`` ops, or as torch.fft in TorchScript).
    """
    if fft is None:
        return DEFAULT_LOWERING[fmt]
    if fft == "matmul":
        return "matmul"
    return "dft" if fmt == "onnx" else "torch"


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
    ``fields`` are :class:`ExportOptions` fields, a shorthand for ``options`` (not both).
    """
    options = _options(options, fields)
    stages = _Stages(progress, options.stages)
    return _export(model, resolve_spec(model, check_size(size)), size, out_dir, name, options, checkpoint, stages)


def _options(options: ExportOptions | None, fields: Mapping[str, Any]) -> ExportOptions:
    if options is not None and fields:
        raise TypeError(f"give ExportOptions or its fields as keywords, not both (got {', '.join(fields)})")
    return options if options is not None else ExportOptions(**fields)


def _export(
    model: nn.Module,
    spec: niff.ModelSpec,
    size: int,
    out_dir: str | os.PathLike[str],
    name: str | None,
    options: ExportOptions,
    checkpoint: str | os.PathLike[str] | None,
    stages: _Stages,
) -> ExportResult:
    if options.report:
        from niff_export.report.figures import require_matplotlib  # the report extra, only when asked

        require_matplotlib()  # before hours of export, not after
    plan = _plan(model.eval(), spec, size, name, options, stages)
    staging = StagingFolder(
        Path(out_dir),
        plan.name,
        options.version,
        force=options.force,
        keep_versions=options.keep_versions,
        shared=_shared_fields(plan),
    )
    try:
        built = _build(plan, staging, stages)
        with stages("Checking parity with eager PyTorch"):
            report, agreement = _verify(plan, built, staging.path / staging.version_dir)
        kernel_report = _write_report(plan, staging, stages) if options.report else None
        manifest = _write(plan, built, staging, report, agreement, checkpoint, kernel_report)
        path = staging.commit()
    except BaseException:
        staging.discard()
        raise
    return ExportResult(
        path,
        manifest,
        report,
        stages.timings,
        plan.compact,
        agreement,
        versions=staging.versions,
        removed_versions=staging.removed,
    )


def _plan(
    model: nn.Module, spec: niff.ModelSpec, size: int, name: str | None, options: ExportOptions, stages: _Stages
) -> _Plan:
    formats = tuple(dict.fromkeys(options.formats))
    lowerings = {fmt: lowering_for(fmt, options.fft) for fmt in formats}
    target = resolve_target(options.target, lowerings.get("onnx"))
    name = check_name(name or spec.arch or f"{type(model).__name__.lower()}_{size}")
    given = list(options.labels) if options.labels is not None else spec.labels
    preprocessing = planned_preprocessing(spec, size, options.preprocessing)
    labels = resolve_labels(spec.num_classes, given)
    compact, calibration = None, None
    if options.compact is not None:
        with stages(f"Measuring kernels at {size}x{size} for compaction"):
            compact = plan_compaction(model, size, options.compact)
            if options.compact.calibration is not None:
                calibration = calibration_images(Path(options.compact.calibration), preprocessing, labels)
                options.compact.check_calibration(labelled=calibration.labels is not None)
    return _Plan(
        model=model,
        spec=spec,
        size=size,
        name=name,
        options=options,
        formats=formats,
        labels=labels,
        preprocessing=preprocessing,
        lowerings=lowerings,
        compact=compact,
        calibration=calibration,
        target=target,
        runtimes={fmt: gate_runtimes(fmt, target) for fmt in formats},
    )


def planned_preprocessing(spec: niff.ModelSpec, size: int, overrides: Mapping[str, Any]) -> niff.Preprocessing:
    """The preprocessing an export of a model (``resolve_spec``) at ``size`` records: its own at ``size``, with
    ``overrides`` (``ExportOptions.preprocessing``), validated."""
    try:
        return spec.preprocessing.updated(**overrides, input_size=size)
    except ValidationError as exc:
        name_of = lambda field: {"input_size": "--size", **PREPROCESSING_OPTIONS}.get(field, f"--{field}")  # noqa: E731
        raise ExportError(f"invalid preprocessing: {describe_errors(exc.errors(), name_of)}") from None


def _shared_fields(plan: _Plan) -> SharedFields:
    """What the exported version will say for the whole folder (checked against the versions it joins)."""
    return SharedFields(
        platform=TRITON_PLATFORMS["onnx" if "onnx" in plan.formats else "torchscript"],
        input_shape=(3, plan.size, plan.size),
        num_classes=plan.spec.num_classes,
        labels_sha256=hashlib.sha256(labels_text(plan.labels).encode()).hexdigest(),
        preprocessing=plan.preprocessing,
    )


def _build(plan: _Plan, staging: StagingFolder, stages: _Stages) -> _Built:
    """Bake, compact and lower the model, and write every artifact into the staging folder."""
    size, fp16 = plan.size, plan.options.fp16
    with stages(f"Baking filters at {size}x{size}"):
        baked = bake(plan.model, size)
        deployed = baked if plan.compact is None else compact_model(baked, plan.compact, wrap_padding(plan.target))
    artifacts: dict[str, _Artifact] = {}
    for fmt in plan.formats:
        lowering, tuning = plan.lowerings[fmt], None
        if plan.options.tune:
            tuning = tuning_record(fmt, min(TUNE_BATCH, plan.options.max_batch_size))
            with stages(f"Tuning the spectral layers for {fmt}"):
                choices = tune_layers(deployed, fmt, lowering, batch=tuning.batch, fp16=fp16)
        else:
            choices = default_choices(deployed, lowering)
        with stages(f"Writing {fmt} ({lowering} lowering{', fp16' if fp16 else ''})"):
            family = "matmul" if lowering == "matmul" else "torch"
            per_layer = {choice.layer: choice.lowering for choice in choices}
            module = in_precision(lower(copy.deepcopy(deployed), family, per_layer), fp16)
            relative = f"{staging.version_dir}/{MODEL_FILES[fmt]}"
            if fmt == "onnx":
                opset = onnx_opset(plan.compact, plan.options.opset, DEFAULT_OPSET[lowering], wrap_padding(plan.target))
                info = write_onnx(module, torch.randn(2, 3, size, size), staging.path / relative, lowering, opset)
            else:
                info = write_torchscript(module, staging.path / relative)
            artifacts[fmt] = _Artifact(
                path=relative,
                lowering=lowering,
                fp16=fp16,
                exporter=info.exporter,
                opset=info.opset,
                tuning=tuning,
                spectral_layers=tuple(choices),
                target=plan.target if fmt == "onnx" else None,
                verified_runtimes=tuple(runtime_label(name) for name in plan.runtimes[fmt]),
            )
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
    options, spec = plan.options, plan.spec
    staging.write_text(LABELS_FILE, labels_text(plan.labels))
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=plan.name,
        version=options.version,
        arch=spec.arch,
        builder=spec.builder,
        arch_kwargs=jsonable(spec.arch_kwargs),
        num_classes=spec.num_classes,
        input=TensorSpec(name=INPUT_NAME, shape=(3, plan.size, plan.size), layout="NCHW"),
        output=TensorSpec(name=OUTPUT_NAME, shape=(spec.num_classes,)),
        preprocessing=plan.preprocessing,
        labels_file=LABELS_FILE,
        labels_sha256=sha256_file(staging.path / LABELS_FILE),
        max_batch_size=options.max_batch_size,
        artifacts={fmt: artifact.record(staging.path) for fmt, artifact in built.artifacts.items()},
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


def _write_report(plan: _Plan, staging: StagingFolder, stages: _Stages) -> ReportRecord:
    """niff-report's kernel report of the exported model, in the staging folder's ``report/``."""
    from niff_export.report.api import report_model  # the report extra (matplotlib): imported only when asked

    with stages("Writing the kernel report"):
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
    loaded: Callable[[niff.ModelSpec], None] | None = None,
    **fields: Any,
) -> ExportResult:
    """Load a checkpoint (``niff.load_checkpoint`` rules) and export it; see ``export_model`` for the options.

    ``loaded`` is called with the model's spec once it has loaded, before the export's long stages.
    """
    options = _options(options, fields)
    check_size(size)
    stages = _Stages(progress, 1 + options.stages)
    with stages("Loading checkpoint"):
        model = load_model(checkpoint, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, ema=ema)
    spec = resolve_spec(model, size)
    if loaded:
        loaded(spec)
    name = name or (None if spec.arch else Path(checkpoint).stem)
    return _export(model, spec, size, out_dir, name, options, checkpoint, stages)


def load_model(
    checkpoint: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    ema: bool = False,
) -> nn.Module:
    """``niff.load_checkpoint`` with its errors as ExportError: a file that is no NIFF checkpoint said as such,
    else with the ``niff.CheckpointError`` as ``__cause__`` (its ``option`` says which argument would resolve it)."""
    try:
        return niff.load_checkpoint(checkpoint, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, ema=ema)
    except niff.CheckpointError as exc:
        if exc.not_niff:
            raise ExportError(exc.not_niff) from None
        raise ExportError(str(exc)) from exc
