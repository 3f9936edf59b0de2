"""Baked NIFF layers: fixed frequency filters, and the exact algebra that turns the reference's layers into them.

At a fixed input size every NIFF filter is a constant. For a real input ``x`` the reference computes
``Re ifft2(ifftshift(F ⊙ fftshift(fft2 x)))`` with all-axis shifts; folding the shifts and the channel
roll into the filter and keeping the Hermitian part's half spectrum gives
``irfft2(rfft2(x) · H)`` — equal to float32 rounding, and only real transforms are left.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from niff.filters import frequency_grid
from niff.layers import FreqConv1x1, FreqConvDW, FreqConvFull


def half_spectrum(shifted: Tensor) -> Tensor:
    """[..., n, n] filter in the reference's shifted layout → the Hermitian part's [..., n, n//2+1] half.

    ``Re ifft2(G ⊙ X) = ifft2(herm(G) ⊙ X)`` for real inputs, where ``herm(G)[k] = (G[k] + conj(G[-k])) / 2``,
    and ``herm(G) ⊙ X`` is Hermitian, so its inverse real transform needs only the half spectrum.
    """
    n = shifted.shape[-1]
    g = torch.fft.ifftshift(shifted, dim=(-2, -1))
    mirrored = torch.roll(torch.flip(g, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return ((g + mirrored.conj()) / 2)[..., : n // 2 + 1]


def _filter64(layer: FreqConvDW | FreqConvFull, size: int) -> Tensor:
    """The layer's MLP filter evaluated once in float64 (shifted layout, reference channel order)."""
    grid = frequency_grid(size, dtype=torch.float64)

    def run(mlp: nn.Module) -> Tensor:
        return functional_call(mlp, {k: v.detach().double() for k, v in mlp.named_parameters()}, (grid,))

    with torch.no_grad():
        return torch.complex(run(layer.mlp_real), run(layer.mlp_imag))


def depthwise_spectrum(layer: FreqConvDW, size: int) -> Tensor:
    """Half spectrum [C, n, n//2+1] (complex128) equal to a depthwise layer at ``size``.

    The all-axis fftshift filters channel ``c`` with MLP output ``(c + C//2) % C``; the roll folds that in.
    """
    filt = _filter64(layer, size)
    return half_spectrum(torch.roll(filt, shifts=-(layer.planes // 2), dims=0))


def mixing_spectrum(layer: FreqConvFull, size: int) -> Tensor:
    """Half spectrum [C_in, C_out, n, n//2+1] (complex128) equal to a full layer at ``size``.

    Input channel ``i`` and output channel ``o`` use the MLP's filter
    ``((i + C_in//2) % C_in, (o + C_out//2) % C_out)``.
    """
    c, o = layer.in_planes, layer.out_planes
    filt = _filter64(layer, size).reshape(c, o, size, size)
    return half_spectrum(torch.roll(filt, shifts=(-(c // 2), -(o // 2)), dims=(0, 1)))


def split_pointwise_weight(pointwise: FreqConv1x1, in_planes: int) -> Tensor:
    """The split layer's 1x1 weight [O, C] with both channel rolls folded in.

    After the depthwise half, the spectrum's channel ``c'`` holds input channel ``c' - C//2``; the
    inverse shift returns output row ``(o + O//2) % O``. So ``W'[o, c] = W[(o + O//2) % O, (c + C//2) % C]``.
    """
    weight = pointwise.mlp.weight.detach().double()
    return torch.roll(weight, shifts=(-(weight.shape[0] // 2), -(in_planes // 2)), dims=(0, 1))


class SpectralConv(nn.Module):
    """Depthwise circular convolution by a fixed filter: ``irfft2(rfft2(x) · H) + bias`` with torch.fft.

    ``spectrum`` is stored as real [C, n, n//2+1, 2] so every exporter can carry it.
    """

    def __init__(self, spectrum: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.size = int(spectrum.shape[-2])
        self.channels = int(spectrum.shape[0])
        self.register_buffer("spectrum", torch.view_as_real(spectrum.to(torch.complex64)).contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().reshape(1, -1, 1, 1))

    def complex_spectrum(self) -> Tensor:
        return torch.view_as_complex(self.spectrum.double())

    def forward(self, x: Tensor) -> Tensor:
        # Transforms run in the spectrum's precision: CPU FFTs have no float16 kernels.
        spectrum = torch.view_as_complex(self.spectrum)
        y = torch.fft.irfft2(torch.fft.rfft2(x.to(self.spectrum.dtype)) * spectrum, s=(self.size, self.size))
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.channels}, size={self.size}, bias={self.bias is not None}"


class SpectralMix(nn.Module):
    """Full convolution by fixed filters: per frequency, a complex [C_in → C_out] channel mix (torch.fft)."""

    def __init__(self, spectrum: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.size = int(spectrum.shape[-2])
        self.in_channels, self.out_channels = int(spectrum.shape[0]), int(spectrum.shape[1])
        self.register_buffer("spectrum", torch.view_as_real(spectrum.to(torch.complex64)).contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().reshape(1, -1, 1, 1))

    def complex_spectrum(self) -> Tensor:
        return torch.view_as_complex(self.spectrum.double())

    def forward(self, x: Tensor) -> Tensor:
        spectrum = torch.view_as_complex(self.spectrum)
        mixed = torch.einsum("bihw,iohw->bohw", torch.fft.rfft2(x.to(self.spectrum.dtype)), spectrum)
        y = torch.fft.irfft2(mixed, s=(self.size, self.size)).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, size={self.size}, bias={self.bias is not None}"


def scale_output_channels(module: SpectralConv | SpectralMix, scale: Tensor, shift: Tensor) -> nn.Module:
    """The same module with ``y ↦ scale·y + shift`` per output channel folded in (a following BatchNorm)."""
    spectrum = module.complex_spectrum()
    if isinstance(module, SpectralConv):
        spectrum = spectrum * scale.double()[:, None, None]
    else:
        spectrum = spectrum * scale.double()[None, :, None, None]
    bias = shift.double() if module.bias is None else module.bias.double().flatten() * scale.double() + shift.double()
    return type(module)(spectrum, bias)
