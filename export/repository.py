"""The model-repository folder (docs/model-repository.md): config.pbtxt, niff.json, labels.txt, N/ (version N)."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from niff_export.artifacts import INPUT_NAME, OUTPUT_NAME
from niff_export.errors import ExportError

FORMAT_VERSION = 1
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
TRITON_PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str) -> str:
    """Model names appear in URLs and folder names: letters, digits, '_', '.', '-'."""
    if not NAME_PATTERN.match(name):
        raise ExportError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (max 128 chars)")
    return name


def jsonable(value: Any) -> Any:
    """Constructor arguments as JSON: classes by name, tuples as lists."""
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def config_pbtxt(name: str, version: int, formats: list[str], size: int, num_classes: int, max_batch_size: int) -> str:
    """Triton model configuration (ONNX preferred when both files exist), serving the one version exported."""
    platform = TRITON_PLATFORMS["onnx" if "onnx" in formats else "torchscript"]
    return "\n".join(
        [
            f'name: "{name}"',
            f'platform: "{platform}"',
            f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}",
            f"max_batch_size: {max_batch_size}",
            "input [",
            f'  {{ name: "{INPUT_NAME}" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }}',
            "]",
            "output [",
            f'  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {num_classes} ] label_filename: "labels.txt" }}',
            "]",
            "dynamic_batching {",
            "  max_queue_delay_microseconds: 2000",
            "}",
            "",
        ]
    )


class StagingFolder:
    """A hidden folder beside the final one: everything is written there and moved in place only on success."""

    def __init__(self, out_dir: Path, name: str, version: int) -> None:
        self.final = out_dir / name
        self.version_dir = str(version)  # Triton's layout: the model files of version N live in N/
        if self.final.exists() and not (self.final / "niff.json").is_file():
            raise ExportError(
                f"{self.final} exists and is not a model folder written by niff-export; choose another --out/--name"
            )
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.path = out_dir / f".{name}.partial-{uuid.uuid4().hex[:8]}"
            (self.path / self.version_dir).mkdir(parents=True)
        except OSError as exc:
            raise ExportError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None

    def write_text(self, relative: str, text: str) -> None:
        (self.path / relative).write_text(text, encoding="utf-8")

    def write_json(self, relative: str, data: Mapping[str, Any]) -> None:
        self.write_text(relative, json.dumps(data, indent=2) + "\n")

    def commit(self) -> Path:
        """Replace any earlier export of the same name with the staged folder."""
        old = self.final.with_name(f".{self.final.name}.old-{uuid.uuid4().hex[:8]}")
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
