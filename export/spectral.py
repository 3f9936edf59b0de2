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


class FixedSpectrum(nn.Module):
    """A fixed half spectrum, stored as real [..., n, n//2+1, 2] so every exporter can carry it, and a bias.

    ``irfft2(product(rfft2(x), H)) + bias``; transforms run in the spectrum's precision because CPU FFTs
    have no float16 kernels. Subclasses say how the product mixes channels.
    """

    output_axis: int  # the spectrum's axis that indexes output channels

    def __init__(self, spectrum: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        self.size = int(spectrum.shape[-2])
        self.register_buffer("spectrum", torch.view_as_real(spectrum.to(torch.complex64)).contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().reshape(1, -1, 1, 1))

    def complex_spectrum(self) -> Tensor:
        return torch.view_as_complex(self.spectrum.double())

    def scaled(self, scale: Tensor, shift: Tensor) -> FixedSpectrum:
        """The same layer followed by ``y ↦ scale·y + shift`` per output channel (an eval-mode BatchNorm)."""
        shape = [1] * (self.spectrum.dim() - 1)
        shape[self.output_axis] = -1
        spectrum = self.complex_spectrum() * scale.double().reshape(shape)
        bias = shift.double() if self.bias is None else self.bias.double().flatten() * scale.double() + shift.double()
        return type(self)(spectrum, bias)

    def product(self, spectrum_in: Tensor, filters: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        spectrum = self.product(torch.fft.rfft2(x.to(self.spectrum.dtype)), torch.view_as_complex(self.spectrum))
        y = torch.fft.irfft2(spectrum, s=(self.size, self.size)).to(x.dtype)
        return y if self.bias is None else y + self.bias


class SpectralConv(FixedSpectrum):
    """Depthwise circular convolution by a fixed filter: a per-channel product with ``H`` [C, n, n//2+1]."""

    output_axis = 0

    def product(self, spectrum_in: Tensor, filters: Tensor) -> Tensor:
        return spectrum_in * filters

    def extra_repr(self) -> str:
        return f"{self.spectrum.shape[0]}, size={self.size}, bias={self.bias is not None}"


class SpectralMix(FixedSpectrum):
    """Full convolution by fixed filters: per frequency, a complex [C_in → C_out] mix with ``H`` [C_in, C_out, n, m]."""

    output_axis = 1

    def product(self, spectrum_in: Tensor, filters: Tensor) -> Tensor:
        return torch.einsum("bihw,iohw->bohw", spectrum_in, filters)

    def extra_repr(self) -> str:
        return f"{self.spectrum.shape[0]}, {self.spectrum.shape[1]}, size={self.size}, bias={self.bias is not None}"
