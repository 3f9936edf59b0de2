"""``niff.json``: the typed description of a model folder, written by niff-export, read by niff-serve.

Format 2 is what this version writes; format 1 folders (niff-export 0.1) have the same fields and are
read as they are. A folder of a newer format is refused with a message saying so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from niff_contract.errors import ContractError, one_line
from niff_contract.preprocessing_spec import Preprocessing

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)

ArtifactKind = Literal["onnx", "torchscript"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("onnx", "torchscript")
# Where each kind lives in a version folder, and Triton's platform name for it.
MODEL_FILES: dict[ArtifactKind, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
TRITON_PLATFORMS: dict[ArtifactKind, str] = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LABELS_FILE = "labels.txt"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

# Model names travel in URL paths and name folders: one safe segment.
MAX_NAME_LENGTH = 128
MAX_KEY = 80  # the longest key of a file quoted in an error message
MAX_ERRORS = 10  # problems of niff.json listed in one message
_MODEL_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_NAME_LENGTH - 1}}}")
NAME_RULE = f"letters, digits, '_', '.' and '-', starting with a letter or digit, at most {MAX_NAME_LENGTH} characters"


def check_model_name(name: str) -> str:
    """``name`` if it is a valid model name, else a ContractError saying the rule."""
    if not _MODEL_NAME.fullmatch(name):
        raise ContractError(f"invalid model name {name!r}: use {NAME_RULE}")
    return name


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Record):
    name: str = Field(min_length=1)
    dtype: Literal["float32"] = "float32"
    shape: tuple[PositiveInt, ...]
    layout: Literal["NCHW"] | None = None


class SpectralLayer(_Record):
    """How one baked spectral layer of an artifact is computed, and the timings it was chosen by.

    ``lowering``: ``separable``, ``kronecker``, ``paired`` or a ``-per-image`` form (matrix products) or
    ``fft`` (FFT ops). ``timings_ms`` holds every candidate's time per batch when ``niff-export --tune``
    measured them, and is empty when the default table chose.
    """

    layer: str
    kind: Literal["depthwise", "full"]
    map_size: PositiveInt
    channels: PositiveInt
    out_channels: PositiveInt
    lowering: str
    timings_ms: dict[str, float] = Field(default_factory=dict)


class TuningRecord(_Record):
    """Where ``niff-export --tune`` timed the candidate lowerings: the runtime and device, and the batch."""

    runtime: str
    batch: PositiveInt


class ArtifactRecord(_Record):
    """One model file: where it is, how it was made, and its sha256 (checked before it is loaded)."""

    path: str = Field(min_length=1)
    sha256: str = Field(pattern=SHA256_PATTERN)
    lowering: str | None = None
    fp16: bool = False
    exporter: str | None = None
    opset: PositiveInt | None = None
    tuning: TuningRecord | None = Field(None, description="Where --tune timed the lowerings; null without it.")
    spectral_layers: tuple[SpectralLayer, ...] | None = Field(
        None, description="Every baked spectral layer's lowering; absent from folders of earlier exporters."
    )
    target: Literal["portable", "onnxruntime", "openvino"] | None = Field(
        None,
        description="ONNX only: where the file is meant to run (niff-export --target); 'onnxruntime' files may "
        "use forms other runtimes refuse. Null for TorchScript and in folders of earlier exporters.",
    )
    verified_runtimes: tuple[str, ...] = Field(
        (),
        description="The runtimes that ran this file in the parity gate at export, with their versions "
        "('onnxruntime 1.32.0', 'openvino 2026.4.1', 'torch 2.13.0'); empty in folders of earlier exporters.",
    )


class ParityRow(_Record):
    """One comparison of a candidate's logits with the eager model's on one input set."""

    candidate: str
    inputs: str
    max_abs: float
    rel_err: float
    top1_agreement: float


class ToleranceOverride(_Record):
    """A parity tolerance the user set (``niff-export --parity-tolerance``) in place of the default, and the
    measured drift of the eager model's own float32 output from float64 (rows ``eager (fp32) vs fp64``)."""

    default_tolerance: float
    float32_drift: tuple[ParityRow, ...]


class Parity(_Record):
    tolerance: float
    passed: bool
    rows: tuple[ParityRow, ...]
    tolerance_override: ToleranceOverride | None = Field(
        None, description="Only when the user set the tolerance; absent from niff.json otherwise."
    )


class CompactLayer(_Record):
    """One NIFF filter layer of a compact export: its kernel, or why it stayed spectral."""

    layer: str
    kind: Literal["depthwise", "full"]
    map_size: PositiveInt
    kernel: PositiveInt | None
    mass_kept: float
    energy_kept: float
    spectral_error: float
    reason: str | None = None


class Agreement(_Record):
    """The compact model's agreement with the exact model and with eager PyTorch, and the gate on it: top-1
    agreement on ``gated_inputs`` (``gate`` "agreement"), or the top-1 accuracy drop on labelled calibration
    images (``gate`` "accuracy", counted in ``CompactRecord.calibration``)."""

    min_agreement: float
    passed: bool
    rows: tuple[ParityRow, ...]
    gate: Literal["agreement", "accuracy"] = "agreement"
    gated_inputs: tuple[str, ...] | None = Field(
        None,
        description="The image inputs whose agreement was gated (none when the accuracy was); null in folders "
        "of earlier exporters, which gated every image input (photos, calibration).",
    )


class CalibrationRecord(_Record):
    """The ``--calibration`` folder: a flat folder of images, or labelled (``DIR/<class name>/<image>``), when
    the exact and compact models' top-1 correct counts and the largest accuracy drop allowed (a share) are
    kept. The optional fields default to what folders of earlier exporters, which took flat folders only, had."""

    folder: str
    images: PositiveInt
    labelled: bool = False
    exact_correct: int | None = Field(None, ge=0, description="Labelled images only.")
    compact_correct: int | None = Field(None, ge=0, description="Labelled images only.")
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="Labelled images only.")


class CompactRecord(_Record):
    """A compact export: what was asked, every filter layer's fate, and the measured agreement."""

    mode: Literal["mass", "error", "kernel"]
    mass: float | None = None
    error: float | None = None
    kernel: PositiveInt | None = None
    layers: tuple[CompactLayer, ...]
    agreement: Agreement
    calibration: CalibrationRecord | None = None


class CheckpointRecord(_Record):
    file: str
    sha256: str = Field(pattern=SHA256_PATTERN)


REPORT_DIR = "report"
# The files of niff-report that a model folder may hold in REPORT_DIR (niff-export --report), and what
# they are served as.
REPORT_FILES: dict[str, str] = {
    "report.json": "application/json",
    "report.md": "text/markdown; charset=utf-8",
    "kernel_mass.png": "image/png",
    "spectral_error.png": "image/png",
    "kernels.png": "image/png",
    "effective_kernels.png": "image/png",
}


class ReportRecord(_Record):
    """The kernel report in the folder's ``report/``: each file's sha256, checked before it is served."""

    files: dict[str, Annotated[str, Field(pattern=SHA256_PATTERN)]]

    @model_validator(mode="after")
    def _known_files(self) -> ReportRecord:
        unknown = sorted(set(self.files) - set(REPORT_FILES))
        if unknown:
            raise ValueError(f"report.files names {', '.join(unknown)}; a report holds {', '.join(REPORT_FILES)}")
        return self


class Manifest(_Record):
    """Everything in ``niff.json``. niff-export writes every field; a folder made by other means needs
    only what serving reads (name, classes, tensors, preprocessing, batch size, artifacts with sha256).
    ``labels_sha256`` is optional only so that folders of earlier exporters still load; niff-export
    always writes it."""

    format_version: Literal[1, 2] = FORMAT_VERSION
    name: str
    version: PositiveInt = 1
    arch: str | None = Field(None, description="The zoo name, or null for a variant outside the zoo.")
    builder: str | None = None
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: PositiveInt
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    labels_file: str = LABELS_FILE
    labels_sha256: str | None = Field(
        None,
        pattern=SHA256_PATTERN,
        description="The labels file's sha256, checked when the folder is read; niff-export writes it, and "
        "only folders of earlier exporters lack it (accepted for them alone).",
    )
    max_batch_size: PositiveInt
    artifacts: dict[ArtifactKind, ArtifactRecord]
    parity: Parity | None = None
    report: ReportRecord | None = None
    checkpoint: CheckpointRecord | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    created: str | None = None
    compact: CompactRecord | None = Field(None, description="Only in a compact export.")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        check_model_name(self.name)
        size = self.preprocessing.input_size
        if self.input.shape != (3, size, size):
            raise ValueError(f"input.shape {list(self.input.shape)} is not [3, {size}, {size}] (preprocessing)")
        if self.output.shape != (self.num_classes,):
            raise ValueError(f"output.shape {list(self.output.shape)} is not [{self.num_classes}] (num_classes)")
        if not self.artifacts:
            raise ValueError(f"artifacts names none of {', '.join(ARTIFACT_KINDS)}")
        for kind, record in self.artifacts.items():
            if PurePosixPath(record.path).parts[:1] != (str(self.version),):
                raise ValueError(
                    f"artifacts.{kind}.path {record.path!r} is not in the folder of version {self.version} "
                    f"('{self.version}/', Triton's layout)"
                )
        return self

    @property
    def platform(self) -> str:
        """Triton's platform for this folder: ONNX Runtime when it has an ONNX file."""
        return TRITON_PLATFORMS["onnx" if "onnx" in self.artifacts else "torchscript"]

    def to_json(self) -> str:
        """The text of niff.json; an exact export has no ``compact`` key at all, one without a report no
        ``report`` key, and a parity record with the default tolerance no ``tolerance_override`` key."""
        exclude: dict[str, Any] = {name: True for name in ("compact", "report") if getattr(self, name) is None}
        if self.parity is not None and self.parity.tolerance_override is None:
            exclude["parity"] = {"tolerance_override"}
        return self.model_dump_json(indent=2, exclude=exclude or None) + "\n"


def parse_manifest(data: Any) -> Manifest:
    """A Manifest from decoded ``niff.json``; a ContractError naming every problem otherwise."""
    if not isinstance(data, dict):
        raise ContractError("niff.json is not a JSON object")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ContractError(
            f"niff.json is format {version}, written by a newer niff-export; this version reads formats "
            f"{READABLE_FORMATS[0]} to {READABLE_FORMATS[-1]}: upgrade niff-serve, or re-export the model"
        )
    try:
        return Manifest.model_validate(data)
    except RecursionError:
        raise ContractError("niff.json is nested too deeply to validate") from None
    except ValidationError as exc:
        hint = "; it was written in format 1: re-export it with this niff-export" if version == 1 else ""
        raise ContractError(f"niff.json: {describe_errors(exc.errors(), limit=MAX_ERRORS)}{hint}") from None


def describe_errors(
    errors: Iterable[Mapping[str, Any]], name_of: Callable[[str], str] = str, limit: int | None = None
) -> str:
    """Pydantic error dicts as ``location: message; ...`` on one line (every one, or the first ``limit``);
    ``name_of`` renames the top-level field."""
    errors = list(errors)
    lines = []
    for item in errors[:limit]:
        loc = [one_line(str(part), MAX_KEY) for part in item["loc"]]  # keys come from the file: escaped, cut
        where = ".".join([name_of(loc[0]), *loc[1:]]) if loc else ""
        message = one_line(item["msg"].removeprefix("Value error, "))
        lines.append(f"{where}: {message}" if where else message)
    more = f"; and {len(errors) - limit} more" if limit is not None and len(errors) > limit else ""
    return "; ".join(lines) + more
