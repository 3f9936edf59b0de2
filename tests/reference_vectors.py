"""Access to the golden vectors made by running the paper's own code.

The full set lives beside the repository (``../shared/reference``, or ``NIFF_REFERENCE_DIR``) and is used
whenever it is there; otherwise the compact subset committed under ``tests/fixtures/reference`` (made from
the full set by ``tools/make_reference_subset.py``), so a plain clone runs every golden test too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where it is used: the suite's header and the fast tier import this module
    import torch
    from torch import nn

FULL_SET_DIR = Path(os.environ.get("NIFF_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"))
SUBSET_DIR = Path(__file__).resolve().parent / "fixtures" / "reference"
REFERENCE_DIR = FULL_SET_DIR if (FULL_SET_DIR / "index.json").is_file() else SUBSET_DIR


@dataclass(frozen=True)
class Golden:
    file: str
    meta: dict[str, Any]

    @property
    def is_layer(self) -> bool:
        return self.file.startswith("layer_")

    def load(self) -> dict[str, Any]:
        import torch

        return torch.load(REFERENCE_DIR / self.file, weights_only=True)


def vectors() -> list[Golden]:
    return [Golden(entry["file"], entry) for entry in json.loads((REFERENCE_DIR / "index.json").read_text())]


def layer_for(meta: dict[str, Any]) -> nn.Module:
    """Our layer for a golden layer file, from the reference constructor call recorded in its meta."""
    from niff.layers import FreqConv1x1, FreqConvDW, FreqConvFull, split_conv

    ref, c, o = meta["reference"], meta.get("C"), meta.get("O")
    if "FreqConv_DW_fftifft" in ref:
        return FreqConvDW(c, mlp="big" if "niff_big" in ref else "small")
    if "FreqConv_DW_fft(C)" in ref:
        return split_conv(c, o)
    if "FreqConv_1x1_fftifft_convnext" in ref:
        return FreqConv1x1(c, o, channels_last=True)
    if "FreqConv_1x1_fftifft" in ref:
        return FreqConv1x1(c, o)
    if "FreqConv_full_fftifft" in ref:
        return FreqConvFull(c, o)
    raise KeyError(f"no layer mapping for {ref}")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).norm() / reference.double().norm())
