"""NIFF layers: convolutions done as products in the frequency domain, with the reference's numerics.

Three kinds, each in the reference's three transform modes:

* ``"fftifft"`` — spatial in, spatial out (fft2 → product → ifft2 → real part);
* ``"fft"`` — spatial in, the *shifted* spectrum out (for a following ``"ifft"`` layer);
* ``"ifft"`` — shifted spectrum in, spatial out.

The reference calls ``torch.fft.fftshift``/``ifftshift`` without ``dim=``, so every axis is shifted,
batch and channels included. We keep that on purpose: the spectrum a ``"fft"`` layer hands on has the
reference's layout, and a depthwise layer filters channel ``c`` with MLP output ``(c + C//2) % C``
exactly as the reference does (the batch shift cancels out because filters are shared over the batch).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from niff.filters import FilterMLP, frequency_grid, mlp_for

Transform = Literal["fftifft", "fft", "ifft"]
TRANSFORMS: tuple[str, ...] = ("fftifft", "fft", "ifft")


def square_size(x: Tensor, channels_last: bool = False) -> int:
    """The side of a square feature map; NIFF filters are only defined for square maps."""
    height, width = (x.shape[-3], x.shape[-2]) if channels_last else (x.shape[-2], x.shape[-1])
    if height != width:
        raise ValueError(
            f"NIFF layers need square feature maps, got {height}x{width}: the reference's frequency "
            "grid is only defined for square inputs"
        )
    return int(height)


def _real_dtype(x: Tensor) -> torch.dtype:
    return x.real.dtype if x.is_complex() else x.dtype


def _check_transform(transform: str) -> None:
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; expected one of {TRANSFORMS}")


def _to_spectrum(x: Tensor) -> Tensor:
    return torch.fft.fftshift(torch.fft.fft2(x))


def _to_spatial(x: Tensor) -> Tensor:
    return torch.fft.ifft2(torch.fft.ifftshift(x)).real


class _ImplicitFilter(nn.Module):
    """Holds the real and imaginary MLPs shared by the depthwise and full layers."""

    def __init__(self, planes: int, mlp: str) -> None:
        super().__init__()
        # Registered imaginary first, like the reference, so state_dict order matches too.
        self.mlp_imag = mlp_for(mlp, planes)
        self.mlp_real = mlp_for(mlp, planes)

    def frequency_filter(
        self, size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Tensor:
        """The complex filter the MLPs produce on the size×size grid, [P, size, size], in shifted layout."""
        grid = frequency_grid(size, dtype=dtype, device=device)
        return torch.complex(self.mlp_real(grid), self.mlp_imag(grid))


class FreqConvDW(_ImplicitFilter):
    """Depthwise NIFF convolution (reference ``FreqConv_DW_fftifft`` / ``_fft`` / ``_ifft``).

    ``mlp`` picks the filter MLP: ``"small"`` (niff_small.py) or ``"big"`` (niff_big.py, ConvNeXt).
    """

    def __init__(self, planes: int, mlp: str = "small", transform: Transform = "fftifft") -> None:
        _check_transform(transform)
        super().__init__(planes, mlp)
        self.planes = planes
        self.mlp_size = mlp
        self.transform = transform

    def forward(self, x: Tensor) -> Tensor:
        size = square_size(x)
        if x.shape[1] != self.planes:
            raise ValueError(f"{type(self).__name__} expects {self.planes} channels, got {x.shape[1]}")
        weights = self.frequency_filter(size, _real_dtype(x), x.device)
        spectrum = x if self.transform == "ifft" else _to_spectrum(x)
        spectrum = weights * spectrum
        return spectrum if self.transform == "fft" else _to_spatial(spectrum)

    def extra_repr(self) -> str:
        return f"{self.planes}, mlp={self.mlp_size!r}, transform={self.transform!r}"


class FreqConvFull(_ImplicitFilter):
    """Full NIFF convolution: an in×out filter bank mixed per frequency (reference ``FreqConv_full_*``)."""

    def __init__(self, in_planes: int, out_planes: int, transform: Transform = "fftifft") -> None:
        _check_transform(transform)
        super().__init__(in_planes * out_planes, "tiny")
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.transform = transform

    def forward(self, x: Tensor) -> Tensor:
        size = square_size(x)
        weights = self.frequency_filter(size, _real_dtype(x), x.device)
        weights = weights.reshape(self.in_planes, self.out_planes, size, size)
        spectrum = x if self.transform == "ifft" else _to_spectrum(x)
        spectrum = torch.einsum("bihw,iohw->bohw", spectrum, weights)
        return spectrum if self.transform == "fft" else _to_spatial(spectrum)

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, transform={self.transform!r}"


class FreqConv1x1(nn.Module):
    """Pointwise NIFF convolution: a bias-free linear map applied to the spectrum's real and imaginary parts.

    ``transform="fftifft"`` is the reference's ``FreqConv_1x1_fftifft`` (``channels_last=True``: its
    ConvNeXt form on (N, H, W, C) tensors); ``"ifft"`` is ``FreqConv_1x1_ifft``, which takes the shifted
    spectrum a ``FreqConvDW(transform="fft")`` produces.
    """

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        transform: Literal["fftifft", "ifft"] = "fftifft",
        channels_last: bool = False,
    ) -> None:
        if transform not in ("fftifft", "ifft"):
            raise ValueError(f"FreqConv1x1 supports transforms 'fftifft' and 'ifft', not {transform!r}")
        if channels_last and transform != "fftifft":
            raise ValueError("the channels-last form exists only for transform='fftifft'")
        super().__init__()
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.transform = transform
        self.channels_last = channels_last
        self.mlp = nn.Linear(in_planes, out_planes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        square_size(x, self.channels_last)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        if self.transform == "fftifft":
            x = torch.fft.fft2(x)
        x = x.permute(0, 2, 3, 1)
        x = torch.complex(self.mlp(x.real), self.mlp(x.imag)).permute(0, 3, 1, 2)
        x = torch.fft.ifft2(x).real if self.transform == "fftifft" else _to_spatial(x)
        return x.permute(0, 2, 3, 1) if self.channels_last else x

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, transform={self.transform!r}, channels_last={self.channels_last}"


def split_conv(in_planes: int, out_planes: int, mlp: str = "small") -> nn.Sequential:
    """The reference's split convolution: depthwise filter to the spectrum, then a pointwise layer back."""
    return nn.Sequential(
        FreqConvDW(in_planes, mlp, transform="fft"), FreqConv1x1(in_planes, out_planes, transform="ifft")
    )


__all__ = [
    "TRANSFORMS",
    "FilterMLP",
    "FreqConv1x1",
    "FreqConvDW",
    "FreqConvFull",
    "split_conv",
    "square_size",
]
