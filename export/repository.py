"""Writing a model folder (docs/model-repository.md) atomically: staged beside the final folder, then moved in place."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from niff_contract import ContractError, check_model_name
from niff_export.errors import ExportError


def check_name(name: str) -> str:
    """Model names appear in URLs and folder names (the contract's rule)."""
    try:
        return check_model_name(name)
    except ContractError as exc:
        raise ExportError(str(exc)) from None


def jsonable(value: Any) -> Any:
    """Constructor arguments as JSON: classes by name, tuples as lists."""
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


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
