"""Reading and checking a model repository (docs/model-repository.md) before anything is loaded.

Every problem is a :class:`ConfigurationError` naming the folder and the file, so a bad deployment
stops at start-up with a sentence instead of failing on the first request.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from niff_serve import pbtxt
from niff_serve.errors import ConfigurationError, describe_errors

ArtifactKind = Literal["onnx", "torchscript"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("onnx", "torchscript")
# Model names travel in URL paths: one safe segment.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TensorSpec(_Spec):
    name: str = Field(min_length=1)
    dtype: Literal["float32"]
    shape: tuple[PositiveInt, ...]


class PreprocessingSpec(_Spec):
    input_size: PositiveInt
    resize: PositiveInt | None = None
    crop_pct: float | None = Field(None, gt=0, le=1)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bilinear"

    @model_validator(mode="after")
    def _check(self) -> PreprocessingSpec:
        if self.resize is None and self.crop_pct is None:
            raise ValueError("needs 'resize' or 'crop_pct'")
        if self.resize_size < self.input_size:
            raise ValueError(f"resize ({self.resize_size}) is smaller than input_size ({self.input_size})")
        if min(self.std) <= 0:
            raise ValueError("std values must be positive")
        return self

    @property
    def resize_size(self) -> int:
        """Shorter-side length before the center crop."""
        if self.resize is not None:
            return self.resize
        assert self.crop_pct is not None
        return math.floor(self.input_size / self.crop_pct)


class ArtifactSpec(_Spec):
    path: str = Field(min_length=1)
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")


class Manifest(_Spec):
    """The fields of ``niff.json`` the service relies on (format_version 1); others pass through."""

    format_version: Literal[1]
    name: str = Field(min_length=1)
    version: PositiveInt
    num_classes: PositiveInt
    input: TensorSpec
    output: TensorSpec
    preprocessing: PreprocessingSpec
    labels_file: str = "labels.txt"
    max_batch_size: PositiveInt
    artifacts: dict[str, ArtifactSpec]

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        size = self.preprocessing.input_size
        if self.input.shape != (3, size, size):
            raise ValueError(f"input.shape {list(self.input.shape)} is not [3, {size}, {size}] (preprocessing)")
        if self.output.shape != (self.num_classes,):
            raise ValueError(f"output.shape {list(self.output.shape)} is not [{self.num_classes}] (num_classes)")
        if not any(kind in self.artifacts for kind in ARTIFACT_KINDS):
            raise ValueError(f"artifacts names none of {', '.join(ARTIFACT_KINDS)}")
        return self


@dataclass(frozen=True)
class ModelFolder:
    """One validated model folder: what to load and how to feed it."""

    name: str
    path: Path
    manifest: Manifest
    niff_json: dict[str, Any]
    labels: tuple[str, ...]
    max_batch_size: int

    @property
    def version(self) -> str:
        return str(self.manifest.version)

    @property
    def input_size(self) -> int:
        return self.manifest.preprocessing.input_size

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    def artifact_path(self, kind: ArtifactKind) -> Path | None:
        """The artifact file of this kind, or None when the folder has none."""
        spec = self.manifest.artifacts.get(kind)
        return None if spec is None else self.path / spec.path

    def verify_artifact(self, kind: ArtifactKind) -> Path:
        """The artifact's path after checking its sha256 (when niff.json records one)."""
        path = self.artifact_path(kind)
        spec = self.manifest.artifacts.get(kind)
        if path is None or spec is None:
            raise ConfigurationError(f"model {self.name!r}: niff.json lists no {kind} artifact")
        if spec.sha256 is not None:
            digest = hashlib.sha256()
            with path.open("rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != spec.sha256.lower():
                raise ConfigurationError(f"model {self.name!r}: {spec.path} does not match its sha256 in niff.json")
        return path


def scan_repository(root: Path) -> list[ModelFolder]:
    """Every model folder under ``root``, validated; any unusable folder is an error, not a skip."""
    if not root.is_dir():
        raise ConfigurationError(f"model repository {str(root)!r} is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigurationError(f"model repository {str(root)!r} holds no model folders")
    return [read_model_folder(folder) for folder in folders]


def read_model_folder(path: Path) -> ModelFolder:
    """Read and cross-check ``niff.json``, ``labels.txt``, ``config.pbtxt`` and the artifact files."""
    where = f"model folder {str(path)!r}"
    if not _MODEL_NAME.fullmatch(path.name):
        raise ConfigurationError(f"{where}: a model name may hold only letters, digits, '_', '.' and '-'")
    raw = _read_json(path / "niff.json", where)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError(f"{where}: niff.json: {describe_errors(exc.errors())}") from None
    if manifest.name != path.name:
        raise ConfigurationError(f"{where}: niff.json names the model {manifest.name!r}, not {path.name!r}")
    for kind in ARTIFACT_KINDS:
        spec = manifest.artifacts.get(kind)
        if spec is not None and not (path / spec.path).is_file():
            raise ConfigurationError(f"{where}: {kind} artifact {spec.path!r} is missing")
    labels = _read_labels(path / manifest.labels_file, manifest.num_classes, where)
    config_batch = _check_config(path / "config.pbtxt", manifest, where)
    return ModelFolder(
        name=path.name,
        path=path,
        manifest=manifest,
        niff_json=raw,
        labels=labels,
        max_batch_size=min(manifest.max_batch_size, config_batch),
    )


def _read_text(path: Path, where: str, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"{where}: {what} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{where}: {what} is unreadable: {exc}") from None


def _read_json(path: Path, where: str) -> dict[str, Any]:
    text = _read_text(path, where, path.name)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{where}: {path.name} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where}: {path.name} is not a JSON object")
    return data


def _read_labels(path: Path, num_classes: int, where: str) -> tuple[str, ...]:
    lines = _read_text(path, where, f"labels file {path.name}").splitlines()
    if len(lines) != num_classes:
        raise ConfigurationError(f"{where}: {path.name} has {len(lines)} lines for {num_classes} classes")
    return tuple(lines)


def _check_config(path: Path, manifest: Manifest, where: str) -> int:
    """Check config.pbtxt agrees with niff.json; returns its max_batch_size."""
    text = _read_text(path, where, "config.pbtxt")
    try:
        config = pbtxt.parse(text)
    except pbtxt.PbtxtError as exc:
        raise ConfigurationError(f"{where}: config.pbtxt is unreadable: {exc}") from None
    where = f"{where}: config.pbtxt"
    if _single(config, "name", where) != manifest.name:
        raise ConfigurationError(f"{where}: name is not {manifest.name!r}")
    max_batch = _single(config, "max_batch_size", where)
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigurationError(f"{where}: max_batch_size must be a positive integer, got {max_batch!r}")
    for section, spec in (("input", manifest.input), ("output", manifest.output)):
        tensors = {_single(t, "name", where): t for t in config.get(section, [])}
        tensor = tensors.get(spec.name)
        if tensor is None:
            raise ConfigurationError(f"{where}: no {section} named {spec.name!r}")
        if tensor.get("data_type") != ["TYPE_FP32"] or tuple(tensor.get("dims", [])) != spec.shape:
            raise ConfigurationError(
                f"{where}: {section} {spec.name!r} is {tensor.get('data_type')} {tensor.get('dims')}, "
                f"niff.json says TYPE_FP32 {list(spec.shape)}"
            )
    return max_batch


def _single(message: pbtxt.Message, field: str, where: str) -> Any:
    values = message.get(field, [])
    if len(values) != 1:
        raise ConfigurationError(f"{where}: expected exactly one {field!r}")
    return values[0]
