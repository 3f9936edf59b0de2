"""Implicit frequency filters: the reference's coordinate grid and the MLPs that map it to filter values."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# Hidden widths of the reference's MLP_tiny, MLP_small and MLP_big.
MLP_HIDDEN: dict[str, tuple[int, ...]] = {
    "tiny": (8,),
    "small": (8, 4),
    "big": (16, 128, 32),
}


def frequency_grid(size: int, *, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    """The reference's coordinate grid ("mask") for a size×size spectrum, shape [2, size, size].

    Coordinates come from ``arange(-(size/2), size/2)`` exactly as the reference builds them, so odd
    sizes get half-integers (-3.5 … 2.5 for 7). Channel 0 varies along columns, channel 1 along rows.
    It is built per call: caching it, as the reference does, breaks a layer that sees a second size.
    """
    coords = torch.arange(-(size / 2), size / 2, dtype=dtype, device=device)
    return torch.stack([coords[None, :].expand(size, size), coords[:, None].expand(size, size)])


class FilterMLP(nn.Module):
    """Per-frequency MLP (1x1 convolutions with SiLU) from the 2-channel grid to ``planes`` filter values.

    Its parameters are ``layer_mpl1`` … ``layer_mplK``, the reference's state_dict names.
    """

    def __init__(self, planes: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        widths = (2, *hidden, planes)
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths), start=1):
            self.add_module(f"layer_mpl{index}", nn.Conv2d(width_in, width_out, 1))
        self.planes = planes

    def forward(self, grid: Tensor) -> Tensor:
        """[2, S, S] grid → [P, S, S] filter values."""
        x = grid.unsqueeze(0)
        layers = list(self.children())
        for layer in layers[:-1]:
            x = F.silu(layer(x))
        return layers[-1](x).squeeze(0)


def mlp_for(size: str, planes: int) -> FilterMLP:
    """The reference MLP of the given size ("tiny", "small" or "big")."""
    if size not in MLP_HIDDEN:
        raise ValueError(f"unknown MLP size {size!r}; expected one of {sorted(MLP_HIDDEN)}")
    return FilterMLP(planes, MLP_HIDDEN[size])
