"""The model zoo: every architecture by name, with its default preprocessing and class count.

Like timm, the preprocessing an architecture expects travels with it as data (``Preprocessing``, the
model-folder contract's record), so export and serving read it instead of hard-coding ImageNet settings.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from niff_contract import Preprocessing


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture: the class, the keyword arguments that define it, its defaults."""

    name: str
    builder: type[nn.Module]
    arch_kwargs: Mapping[str, Any]
    num_classes: int = 1000
    preprocessing: Preprocessing = field(default_factory=Preprocessing)


@dataclass(frozen=True)
class ModelSpec:
    """What a built model is: registry name (None for a variant outside the zoo), class, arguments.

    ``preprocessing_from_checkpoint`` names the preprocessing fields that a loaded checkpoint's metadata
    set (``niff.load_checkpoint``); the others are the architecture's defaults.
    """

    arch: str | None
    builder: str
    arch_kwargs: Mapping[str, Any]
    num_classes: int
    preprocessing: Preprocessing
    labels: tuple[str, ...] | None = None
    preprocessing_from_checkpoint: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    builder: type[nn.Module],
    num_classes: int = 1000,
    preprocessing: Preprocessing | None = None,
    **arch_kwargs: Any,
) -> ModelEntry:
    """Add an architecture to the zoo; ``arch_kwargs`` are the constructor arguments that define it."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    entry = ModelEntry(name, builder, dict(arch_kwargs), num_classes, preprocessing or Preprocessing())
    _REGISTRY[name] = entry
    return entry


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` filters with shell wildcards (``"resnet*"``)."""
    return sorted(n for n in _REGISTRY if pattern is None or fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; a ValueError lists the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def entries() -> list[ModelEntry]:
    return [_REGISTRY[n] for n in list_models()]


def build_model(
    builder: type[nn.Module],
    arch_kwargs: Mapping[str, Any],
    num_classes: int,
    preprocessing: Preprocessing | None = None,
) -> nn.Module:
    """Instantiate a model and attach what it is as ``model.niff_spec`` (a ``ModelSpec``).

    The spec names the zoo entry these exact arguments build, or None for a variant outside the zoo.
    """
    entry = find_entry(builder, arch_kwargs)
    if preprocessing is None:
        preprocessing = entry.preprocessing if entry else default_preprocessing(builder)
    model = builder(num_classes=num_classes, **arch_kwargs)
    model.niff_spec = ModelSpec(
        entry.name if entry else None, builder.__name__, dict(arch_kwargs), num_classes, preprocessing
    )
    return model


def default_preprocessing(builder: type[nn.Module]) -> Preprocessing:
    """The preprocessing of the zoo's first entry built by ``builder`` (ImageNet defaults otherwise)."""
    return next((e.preprocessing for e in entries() if e.builder is builder), Preprocessing())


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name; ``kwargs`` override or extend its defining constructor arguments."""
    entry = get_entry(name)
    classes = entry.num_classes if num_classes is None else num_classes
    return build_model(entry.builder, {**entry.arch_kwargs, **kwargs}, classes, entry.preprocessing)


def find_entry(builder: type[nn.Module], arch_kwargs: Mapping[str, Any]) -> ModelEntry | None:
    """The zoo entry built by exactly these constructor arguments, if any."""
    wanted = _normalize(arch_kwargs)
    return next((e for e in entries() if e.builder is builder and _normalize(e.arch_kwargs) == wanted), None)


def _normalize(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in kwargs.items()}
