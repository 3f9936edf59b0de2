"""The preprocessing record: timm's evaluation transform as data (input size, crop, mean/std, filter).

It travels with a model from the registry (``niff``) through the checkpoint and ``niff-export`` into
``niff.json``, where ``niff-serve`` reads it; one class validates it everywhere.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's names for PIL's resampling filters.
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
INTERPOLATIONS: tuple[str, ...] = Interpolation.__args__  # type: ignore[attr-defined]
MAX_INPUT_SIZE = 4096
MIN_STD = 1e-6


class Preprocessing(BaseModel):
    """How an image becomes the model's input: timm/torchvision's evaluation transform.

    ``Resize(floor(input_size / crop_pct), interpolation)`` on the shorter side, ``CenterCrop(input_size)``,
    scale to [0, 1], ``Normalize(mean, std)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_size: int = Field(224, ge=1, le=MAX_INPUT_SIZE)
    crop_pct: float = Field(0.875, gt=0, le=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Interpolation = "bilinear"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resize(self) -> int:
        """Shorter-side length before the center crop (timm's ``floor(input_size / crop_pct)``)."""
        return math.floor(self.input_size / self.crop_pct)

    @model_validator(mode="before")
    @classmethod
    def _resize_is_derived(cls, data: Any) -> Any:
        """``resize`` is written for readers, and derived on reading: a stored one must agree."""
        if isinstance(data, dict) and "resize" in data:
            data = dict(data)
            stored = data.pop("resize")
            expected = cls.model_validate(data).resize
            if stored != expected:
                raise ValueError(f"resize {stored!r} is not floor(input_size / crop_pct) = {expected}")
        return data

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError("must be finite numbers")
        return value

    @field_validator("std")
    @classmethod
    def _not_tiny(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) < MIN_STD:
            raise ValueError(f"values must be at least {MIN_STD:g}")
        return value

    def with_size(self, input_size: int) -> Preprocessing:
        """The same recipe at another input size (the crop ratio is kept)."""
        return self.model_validate({**self.model_dump(exclude={"resize"}), "input_size": input_size})

    def updated(self, **changes: Any) -> Preprocessing:
        """A validated copy with ``changes``."""
        return self.model_validate({**self.model_dump(exclude={"resize"}), **changes})
