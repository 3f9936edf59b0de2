"""Lowering the baked spectral layers to operations every runtime executes fast.

``fft`` keeps ``torch.fft`` (cuFFT inside TorchScript; the ONNX ``DFT`` op when exported, which ONNX
Runtime runs naively for sizes that are not powers of two and not at all on its CUDA provider).
``matmul`` computes the transforms as products with precomputed real DFT matrices: plain MatMul,
Mul and Transpose nodes that every runtime and execution provider runs, on tensor cores too.

In the matmul lowering every transform is one large GEMM: over w by right-multiplying the NCHW map,
over h by left-multiplying an "h-major" [h, N·C·w] view, so no GEMM is a small per-image product
(which ONNX Runtime runs several times slower).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from niff_export.spectral import SpectralConv, SpectralMix

# How each artifact format computes the transforms, per --fft choice.
LOWERINGS: tuple[str, ...] = ("matmul", "dft", "torch")


def _dft_blocks(n: int) -> dict[str, Tensor]:
    """Real matrices (float64) for the h-major real 2-D DFT of an n×n map and its inverse."""
    m = n // 2 + 1
    k = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, k) / n
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Along w (right-multiply): the half spectrum's real and imaginary parts, stacked on a leading axis.
    forward_w = torch.stack([cos[:, :m], -sin[:, :m]])
    # Along h (left-multiply) on [Zr; Zi]: X = (C - iS) Z gives [Xr; Xi].
    forward_h = torch.cat([torch.cat([cos, sin], 1), torch.cat([-sin, cos], 1)])
    # Inverse along h: Z = (C + iS) Y / n on [Yr; Yi].
    inverse_h = torch.cat([torch.cat([cos, -sin], 1), torch.cat([sin, cos], 1)]) / n
    # Inverse real transform along w: y = (1/n) Σ_k α_k (Zr cos − Zi sin); α is 1 at DC and Nyquist, else 2.
    alpha = torch.full((m,), 2.0, dtype=torch.float64)
    alpha[0] = 1.0
    if n % 2 == 0:
        alpha[-1] = 1.0
    half_angle = angle[:m]
    inverse_w = torch.stack([alpha[:, None] * torch.cos(half_angle), -alpha[:, None] * torch.sin(half_angle)]) / n
    return {"forward_w": forward_w, "forward_h": forward_h, "inverse_h": inverse_h, "inverse_w": inverse_w}


class SpectralConvMatmul(nn.Module):
    """``SpectralConv`` computed with DFT matrices: five large GEMMs, one broadcast multiply, three transposes.

    1. transpose NCHW to h-major [h, N, C, w] and right-multiply over w by ``[2, w, m]``: the half
       spectrum's real and imaginary parts, stacked as the rows of a [2h, N·C·m] matrix;
    2. left-multiply by the complex h-transform ``[[C, S], [-S, C]]``;
    3. the complex filter product as one broadcast multiply by ``[[Hr, -Hi], [Hi, Hr]]`` and a sum;
    4. left-multiply by the inverse h-transform;
    5. put real | imaginary side by side and right-multiply by the inverse real w-transform ``[2m, w]``,
       then transpose back to NCHW.
    Only simple (≤ 4-D) transposes are used: ONNX Runtime runs 5-D permutations about 3× slower.
    """

    def __init__(self, conv: SpectralConv) -> None:
        super().__init__()
        n, m = conv.size, conv.size // 2 + 1
        self.size, self.half = n, m
        blocks = _dft_blocks(n)
        spectrum = conv.complex_spectrum().permute(1, 0, 2)  # [kh, C, kw]
        real, imag = spectrum.real, spectrum.imag
        product = torch.stack([torch.stack([real, -imag]), torch.stack([imag, real])]).unsqueeze(3)
        self.register_buffer("forward_w", blocks["forward_w"].float())  # [2, w, m]
        self.register_buffer("forward_h", blocks["forward_h"].float())  # [2n, 2n]
        self.register_buffer("product", product.float())  # [out part, in part, kh, 1, C, kw]
        self.register_buffer("inverse_h", blocks["inverse_h"].float())  # [2n, 2n]
        self.register_buffer("inverse_w", torch.cat(list(blocks["inverse_w"]), 0).float())  # [2m, w]
        self.register_buffer("bias", conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, n, m = x.shape[0], x.shape[1], self.size, self.half
        rows, columns = n * batch * channels, batch * channels * m
        t = torch.matmul(x.permute(2, 0, 1, 3).reshape(1, rows, n), self.forward_w).reshape(2 * n, columns)
        spectrum = torch.matmul(self.forward_h, t).reshape(1, 2, n, batch, channels, m)
        filtered = (spectrum * self.product).sum(1).reshape(2 * n, columns)
        z = torch.matmul(self.inverse_h, filtered).reshape(2, rows, m).transpose(0, 1).reshape(rows, 2 * m)
        y = torch.matmul(z, self.inverse_w).reshape(n, batch, channels, n).permute(1, 2, 0, 3)
        return y if self.bias is None else y + self.bias


class SpectralMixMatmul(nn.Module):
    """``SpectralMix`` computed with DFT matrices; the per-frequency mix is one batched real matmul.

    Per frequency, ``[Xr | Xi] @ [[Hr, Hi], [-Hi, Hr]] = [Yr | Yi]`` over the channel axis.
    """

    def __init__(self, mix: SpectralMix) -> None:
        super().__init__()
        n, m = mix.size, mix.size // 2 + 1
        self.size, self.half = n, m
        spectrum = mix.complex_spectrum().permute(2, 3, 0, 1)  # [kh, kw, C_in, C_out]
        self.out_channels = spectrum.shape[3]
        spectrum = spectrum.reshape(n * m, spectrum.shape[2], spectrum.shape[3])
        blocks = _dft_blocks(n)
        mixing = torch.cat(
            [torch.cat([spectrum.real, spectrum.imag], 2), torch.cat([-spectrum.imag, spectrum.real], 2)], 1
        )
        self.register_buffer("forward_w", blocks["forward_w"].float())
        self.register_buffer("forward_h", blocks["forward_h"].float())
        self.register_buffer("mixing", mixing.float())  # [kh·kw, 2·C_in, 2·C_out]
        self.register_buffer("inverse_h", blocks["inverse_h"].float())
        self.register_buffer("inverse_w", blocks["inverse_w"].float())
        self.register_buffer("bias", mix.bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, n, m = x.shape[0], x.shape[1], self.size, self.half
        out = self.out_channels
        rows = x.permute(2, 0, 1, 3).reshape(1, n * batch * channels, n)
        t = torch.matmul(rows, self.forward_w).reshape(2 * n, batch * channels * m)
        spectrum = torch.matmul(self.forward_h, t).reshape(2, n, batch, channels, m)
        per_frequency = spectrum.permute(1, 4, 2, 0, 3).reshape(n * m, batch, 2 * channels)
        mixed = torch.matmul(per_frequency, self.mixing).reshape(n, m, batch, 2, out)
        mixed = mixed.permute(3, 0, 2, 4, 1).reshape(2 * n, batch * out * m)
        z = torch.matmul(self.inverse_h, mixed).reshape(2, n * batch * out, m)
        y = torch.matmul(z, self.inverse_w)
        y = (y[0] + y[1]).reshape(n, batch, out, n).permute(1, 2, 0, 3)
        return y if self.bias is None else y + self.bias


def lower(model: nn.Module, lowering: str) -> nn.Module:
    """The baked model with its spectral layers computed the way ``lowering`` says (in place)."""
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown lowering {lowering!r}; expected one of {LOWERINGS}")
    if lowering != "matmul":
        return model
    replacements = {SpectralConv: SpectralConvMatmul, SpectralMix: SpectralMixMatmul}
    for name, module in list(model.named_modules()):
        if type(module) in replacements:
            model.set_submodule(name, replacements[type(module)](module))
    return model
