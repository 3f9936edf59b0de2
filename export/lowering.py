"""Lowering the baked spectral layers to operations every runtime executes fast.

``--fft`` picks the family: ``torch`` keeps ``torch.fft`` (cuFFT inside TorchScript); ``dft`` the ONNX
``DFT`` op (naive in ONNX Runtime for sizes that are not powers of two, absent from its CUDA provider);
``matmul`` computes the transforms as products with precomputed real DFT matrices, which every runtime
and execution provider runs, on tensor cores too. Within ``matmul`` each layer has a per-layer lowering:

* ``separable`` — the 2-D transform as one product per axis (four GEMMs in all);
* ``kronecker`` — the 2-D transform as one product with the Kronecker matrix of the two axes (two
  GEMMs; the matrix grows as n⁴, so this pays for small maps only);
* ``paired`` — real transforms along both axes, the spectrum as pairs of opposite frequencies: half
  the GEMM work of ``separable`` for three light passes over the spectrum, so it pays on large maps;
* ``separable-per-image``, ``paired-per-image`` — the same, run one image at a time in ONNX (a
  ``Scan`` over the batch, per_image.py); chosen by ``--tune`` only.

``separable`` and ``kronecker`` keep the spectrum as three real blocks ``[Xr, Xi, Xr + Xi]``
(Gauss's three-multiplication complex product): the filter is applied by one elementwise ``Mul``
(or, for a full layer, one batched real matmul per block) and the inverse transform's matrix
recombines ``Yr = k1 − k2``, ``Yi = k3 − k1 − k2``, so no complex arithmetic, slicing or
concatenation is left between the GEMMs.
Every reshape keeps the batch axis first and symbolic, so ONNX Runtime can infer every shape and keep
fusing the neighbouring convolutions with their residual additions and activations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from niff_export import per_image
from niff_export.spectral import FixedSpectrum, SpectralConv, SpectralMix

# How each artifact format computes the transforms, per --fft choice.
LOWERINGS: tuple[str, ...] = ("matmul", "dft", "torch")
# Per-layer lowerings: the matmul family's, those run one image at a time in ONNX (per_image.py), and
# "fft" (the baked layer itself, torch.fft).
PER_IMAGE_LOWERINGS: tuple[str, ...] = ("separable" + per_image.SUFFIX, "paired" + per_image.SUFFIX)
LAYER_LOWERINGS: tuple[str, ...] = ("separable", "kronecker", "paired", *PER_IMAGE_LOWERINGS, "fft")
# Largest map side for which the Kronecker form is the default, and smallest for the paired form
# (ONNX Runtime CPU, docs/benchmarks.md).
KRONECKER_MAX_SIZE = 8
PAIRED_MIN_SIZE = 48
# Largest map side for which --tune times the Kronecker form (its matrices grow as n⁴: 61 M floats at 56²).
KRONECKER_TUNE_MAX_SIZE = 16


class _ReshapeKeepingBatch(torch.autograd.Function):
    """In ONNX: ``Reshape(x, [0, ..., -1])``, whose output shape ONNX shape inference can still relate to x's."""

    @staticmethod
    def forward(ctx, x: Tensor, shape: list[int]) -> Tensor:
        return x.reshape([-1, *shape])

    @staticmethod
    def symbolic(g, x, shape):
        target = torch.tensor([0, *shape[:-1], -1], dtype=torch.int64)
        return g.op("Reshape", x, g.op("Constant", value_t=target))


@torch.jit.unused
def _traced_reshape(x: Tensor, shape: list[int]) -> Tensor:
    if torch.onnx.is_in_onnx_export():
        return _ReshapeKeepingBatch.apply(x, shape)
    return x.reshape([-1, *shape])


def reshape_batch(x: Tensor, shape: list[int]) -> Tensor:
    """``x.reshape(-1, *shape)`` for a batch-first ``x``, exported so the batch dimension stays symbolic.

    A plain reshape exports as ``Reshape(x, [-1, ...])``: ONNX Runtime then loses the batch size's name,
    cannot prove that a residual addition's two inputs have one shape, and stops fusing it into the
    convolution before it (3–19 % slower NIFF-ResNet-50s in docs/benchmarks.md).
    """
    if torch.jit.is_scripting():
        return x.reshape([-1] + shape)  # noqa: RUF005 - TorchScript has no starred expressions
    return _traced_reshape(x, shape)


def _trig(n: int) -> tuple[Tensor, Tensor]:
    angle = 2 * math.pi * torch.outer(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64)) / n
    return torch.cos(angle), torch.sin(angle)


def _half_weights(n: int) -> Tensor:
    """Weights of the half spectrum in a real inverse transform: 1 at DC (and Nyquist for even n), else 2."""
    alpha = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)
    alpha[0] = 1.0
    if n % 2 == 0:
        alpha[-1] = 1.0
    return alpha


def _gauss_columns(real: Tensor, imag: Tensor, dim: int) -> Tensor:
    """A forward transform's real and imaginary parts as the three blocks ``[Xr, Xi, Xr + Xi]`` along ``dim``."""
    return torch.cat([real, imag, real + imag], dim)


def _gauss_rows(real: Tensor, imag: Tensor, dim: int) -> Tensor:
    """An inverse transform ``Gr·Yr + Gi·Yi`` rewritten for the blocks ``k1, k2, k3`` of Gauss's product."""
    return torch.cat([real - imag, -real - imag, imag], dim)


def _gauss_filter(spectrum: Tensor, dim: int) -> Tensor:
    return _gauss_columns(spectrum.real, spectrum.imag, dim)


class _Lowered(nn.Module):
    """A baked spectral layer computed with matrix products; subclasses supply the transforms.

    ``filters`` holds the Gauss blocks of the filter laid out like the spectrum ``[b, C, F]`` (flattened
    positions): ``[C, F]`` for a depthwise layer, ``[F, C, O]`` for a full one.
    """

    def __init__(self, layer: FixedSpectrum) -> None:
        super().__init__()
        self.size = layer.size
        self.mixes = isinstance(layer, SpectralMix)
        shape = layer.spectrum.shape
        self.channels, self.out_channels = int(shape[0]), int(shape[1] if self.mixes else shape[0])
        self.register_buffer("bias", layer.bias)

    def filtered(self, spectrum: Tensor) -> Tensor:
        """The filter applied to a ``[b, C, F]`` spectrum: ``[b, O, F]``."""
        if not self.mixes:
            return spectrum * self.filters
        per_position = torch.matmul(spectrum.permute(2, 0, 1), self.filters)
        return per_position.permute(1, 2, 0)

    def with_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias


class SeparableLowering(_Lowered):
    """The 2-D transform one axis at a time, four GEMMs that ONNX Runtime runs without transposes.

    1. ``F_w · xᵀ`` per map (a product with a transposed operand, which ONNX Runtime folds into the
       GEMM): the half spectrum over w, rows (k_w, re|im), columns h → viewed as [m, (re|im, h)];
    2. right-multiply by the complex h-transform, producing the Gauss blocks [m, (block, k_h)];
    3. the filter (one Mul, or one batched matmul per spectral position for a full layer);
    4. right-multiply by the inverse h-transform with the Gauss recombination → [m, (re|im, h)],
       viewed as [(k_w, re|im), h];
    5. ``zᵀ · G_w`` (transposed operand again): the inverse real transform over w, straight to NCHW.
    """

    def __init__(self, layer: FixedSpectrum) -> None:
        super().__init__(layer)
        n, m = self.size, self.size // 2 + 1
        cos, sin = _trig(n)
        # Over w: Z[k_w] = Σ_w x[w] (cos − i sin); rows (k_w, part).
        forward_w = torch.stack([cos[:m], -sin[:m]], 1).reshape(2 * m, n)
        # Over h on [Zr; Zi]: Xr = C·Zr + S·Zi, Xi = C·Zi − S·Zr; rows (part, h).
        real_h, imag_h = torch.cat([cos, sin]), torch.cat([-sin, cos])
        # Inverse over h: zr = (C·Yr − S·Yi)/n, zi = (S·Yr + C·Yi)/n; columns (part, h).
        inverse_r, inverse_i = torch.cat([cos, sin], 1) / n, torch.cat([-sin, cos], 1) / n
        # Inverse real transform over w: y = Σ_k α_k (zr cos − zi sin)/n; rows (k_w, part).
        alpha = _half_weights(n)[:, None]
        inverse_w = torch.stack([alpha * cos[:m], -alpha * sin[:m]], 1).reshape(2 * m, n) / n
        self.register_buffer("forward_w", forward_w.float())
        self.register_buffer("forward_h", _gauss_columns(real_h, imag_h, 1).float())  # [2n, 3n]
        self.register_buffer("inverse_h", _gauss_rows(inverse_r, inverse_i, 0).float())  # [3n, 2n]
        self.register_buffer("inverse_w", inverse_w.float())
        spectrum = layer.complex_spectrum()  # [C, n, m] or [C, O, n, m]: positions (k_w, block, k_h)
        if self.mixes:
            filters = _gauss_filter(spectrum.permute(3, 2, 0, 1), 1).reshape(3 * n * m, *spectrum.shape[:2])
        else:
            filters = _gauss_filter(spectrum.transpose(1, 2), 2).reshape(spectrum.shape[0], 3 * n * m)
        self.register_buffer("filters", filters.float())
        if self.bias is not None:
            # Stored along w as well ([1, O, 1, n]): OpenVINO's CPU plugin takes a [1, O, 1, 1] addition after
            # the last product for a per-column post-op of that product and fails to compile the model.
            self.bias = self.bias.expand(*self.bias.shape[:3], n).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        n, m, c, o = self.size, self.size // 2 + 1, self.channels, self.out_channels
        t = reshape_batch(torch.matmul(self.forward_w, x.transpose(2, 3)), [c, m, 2 * n])
        spectrum = reshape_batch(torch.matmul(t, self.forward_h), [c, 3 * n * m])
        filtered = reshape_batch(self.filtered(spectrum), [o, m, 3 * n])
        z = reshape_batch(torch.matmul(filtered, self.inverse_h), [o, 2 * m, n])
        return self.with_bias(torch.matmul(z.transpose(2, 3), self.inverse_w))


class KroneckerLowering(_Lowered):
    """The 2-D transform as one GEMM over the flattened map ([n², 3·n·m], then [3·n·m, n²]).

    Two GEMMs and the filter, nothing else: the least work in ONNX Runtime for small maps, where the
    n⁴-sized matrices are still small (7²: 49×84) and per-operation costs dominate.
    """

    def __init__(self, layer: FixedSpectrum) -> None:
        super().__init__(layer)
        n, m = self.size, self.size // 2 + 1
        index = torch.arange(n, dtype=torch.float64)
        # phase[h, w, k_h, k_w]; X = Σ x e^{-i·phase}, y = Σ α_kw Re(Y e^{+i·phase}) / n².
        phase = (2 * math.pi / n) * (
            index[:, None, None, None] * index[None, None, :, None]
            + index[None, :, None, None] * index[None, None, None, :m]
        )
        cos, sin = torch.cos(phase).reshape(n * n, n * m), torch.sin(phase).reshape(n * n, n * m)
        weight = _half_weights(n).repeat(n)[:, None] / (n * n)
        self.register_buffer("forward_2d", _gauss_columns(cos, -sin, 1).float())  # [n², 3nm]
        self.register_buffer("inverse_2d", _gauss_rows(weight * cos.t(), -weight * sin.t(), 0).float())  # [3nm, n²]
        spectrum = layer.complex_spectrum()  # positions (block, k_h, k_w)
        if self.mixes:
            filters = _gauss_filter(spectrum.permute(2, 3, 0, 1).reshape(n * m, *spectrum.shape[:2]), 0)
        else:
            filters = _gauss_filter(spectrum.reshape(spectrum.shape[0], n * m), 1)
        self.register_buffer("filters", filters.float())

    def forward(self, x: Tensor) -> Tensor:
        n, c, o = self.size, self.channels, self.out_channels
        spectrum = torch.matmul(reshape_batch(x, [c, n * n]), self.forward_2d)
        y = reshape_batch(torch.matmul(self.filtered(spectrum), self.inverse_2d), [o, n, n])
        return self.with_bias(y)


# The four real coefficients of a frequency pair, in the order (h part, w part) = cc, cs, sc, ss, mixed
# into the Gauss blocks [Ur, Ui, Ur + Ui, Vr, Vi, Vr + Vi] of U = X(k_h, k_w) and V = X(−k_h, k_w):
# X(±k_h, k_w) = (cc ∓ ss) − i(cs ± sc).
_PAIR_BLOCKS = torch.tensor(
    [[1, 0, 0, -1], [0, -1, -1, 0], [1, -1, -1, -1], [1, 0, 0, 1], [0, -1, 1, 0], [1, -1, 1, 1]], dtype=torch.float64
)
# The filtered blocks' Gauss products (k1, k2, k3 of U, then of V) back to the four coefficients of the
# real inverse transforms: cc = Re(Y_U + Y_V), cs = −Im(Y_U + Y_V), sc = Im(Y_V − Y_U), ss = Re(Y_V − Y_U).
_PAIR_COEFFICIENTS = torch.tensor(
    [[1, -1, 0, 1, -1, 0], [1, 1, -1, 1, 1, -1], [1, 1, -1, -1, -1, 1], [-1, 1, 0, 1, -1, 0]], dtype=torch.float64
)


class PairedLowering(_Lowered):
    """Real transforms along both axes; each frequency pair (k_h, k_w), (−k_h, k_w) as four real coefficients.

    1. ``F_w · xᵀ``: the real transform over w, rows (cos|sin, k_w) — as in ``separable``;
    2. the real transform over h for the cos and the sin half at once (a broadcast product), giving per
       map the coefficients [(cos|sin over h), (cos|sin over w), k_w, k_h] for k_h, k_w ≤ n/2;
    3. one product with a 6×4 matrix: the Gauss blocks of both frequencies of every pair;
    4. the filter (one Mul; a full layer: one batched matmul per block position);
    5. one product with a 4×6 matrix: the result's four real coefficients per pair;
    6. the inverse over w with a transposed operand, then over h: NCHW straight out.

    Each real transform costs about n³ multiply-adds per map where ``separable``'s complex ones cost up
    to 3n³ (four GEMMs of ~n³ against ~8n³ in all); steps 3–5 are three passes over the spectrum.
    """

    def __init__(self, layer: FixedSpectrum) -> None:
        super().__init__(layer)
        n, m = self.size, self.size // 2 + 1
        cos, sin = _trig(n)
        real_w, real_h = torch.cat([cos[:m], sin[:m]]), (cos[:, :m], sin[:, :m])  # [(cos|sin, k_w), w], [h, k_h]
        self.register_buffer("forward_w", real_w.float())
        self.register_buffer("forward_h", torch.stack(real_h).float())  # [cos|sin, h, k_h]
        self.register_buffer("pair_blocks", _PAIR_BLOCKS.float())
        self.register_buffer("pair_coefficients", _PAIR_COEFFICIENTS.float())
        alpha = _half_weights(n).repeat(2)
        self.register_buffer("inverse_w", (real_w * alpha[:, None] / n).float())
        # Each pair holds k_h and −k_h, so the inverse over h weighs it α/2: ½ where k_h is its own opposite.
        self.register_buffer("inverse_h", (torch.cat(real_h, 1) * alpha[None, :] / (2 * n)).float())
        spectrum = layer.complex_spectrum()  # [..., n (k_h), m (k_w)]
        k_h = torch.arange(m)
        pair = spectrum[..., k_h, :], spectrum[..., (n - k_h) % n, :]  # H(k_h, k_w), H(−k_h, k_w)
        blocks = torch.cat(
            [_gauss_filter(h.transpose(-1, -2).unsqueeze(-3), -3) for h in pair], -3
        )  # [..., 6, k_w, k_h]
        if self.mixes:
            filters = blocks.reshape(*spectrum.shape[:2], 6 * m * m).permute(2, 0, 1)
        else:
            filters = blocks.reshape(spectrum.shape[0], 6 * m * m)
        self.register_buffer("filters", filters.float())

    def forward(self, x: Tensor) -> Tensor:
        n, m, c, o = self.size, self.size // 2 + 1, self.channels, self.out_channels
        t = reshape_batch(torch.matmul(self.forward_w, x.transpose(2, 3)), [c, 1, 2 * m, n])
        coefficients = reshape_batch(torch.matmul(t, self.forward_h), [c, 4, m * m])
        blocks = reshape_batch(torch.matmul(self.pair_blocks, coefficients), [c, 6 * m * m])
        filtered = reshape_batch(self.filtered(blocks), [o, 6, m * m])
        result = reshape_batch(torch.matmul(self.pair_coefficients, filtered), [o, 2, 2 * m, m])
        z = reshape_batch(torch.matmul(result.transpose(3, 4), self.inverse_w), [o, 2 * m, n])
        return self.with_bias(torch.matmul(self.inverse_h, z))


MATMUL_LOWERINGS: dict[str, type[_Lowered]] = {
    "separable": SeparableLowering,
    "kronecker": KroneckerLowering,
    "paired": PairedLowering,
}


def spectral_layers(model: nn.Module) -> Iterator[tuple[str, FixedSpectrum]]:
    """The baked spectral layers of ``model`` with their module names."""
    for name, module in model.named_modules():
        if isinstance(module, (SpectralConv, SpectralMix)):
            yield name, module


def default_layer_lowering(layer: FixedSpectrum, lowering: str) -> str:
    """The per-layer lowering used without ``--tune``: measured on ONNX Runtime CPU (docs/benchmarks.md)."""
    if lowering != "matmul":
        return "fft"
    if layer.size <= KRONECKER_MAX_SIZE:
        return "kronecker"
    return "paired" if layer.size >= PAIRED_MIN_SIZE else "separable"


def lower_layer(layer: FixedSpectrum, choice: str) -> nn.Module:
    """One baked spectral layer computed the way ``choice`` (one of ``LAYER_LOWERINGS``) says."""
    if choice == "fft":
        return layer
    if choice in PER_IMAGE_LOWERINGS:
        return per_image.PerImage(lower_layer(layer, choice.removesuffix(per_image.SUFFIX)))
    if choice not in MATMUL_LOWERINGS:
        raise ValueError(f"unknown layer lowering {choice!r}; expected one of {LAYER_LOWERINGS}")
    return MATMUL_LOWERINGS[choice](layer)


def lower(model: nn.Module, lowering: str, choices: Mapping[str, str] | None = None) -> nn.Module:
    """The baked model with its spectral layers computed the way ``lowering`` says (in place).

    ``choices`` maps layer names to per-layer lowerings (from ``--tune``); other layers get the default.
    """
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown lowering {lowering!r}; expected one of {LOWERINGS}")
    choices = choices or {}
    for name, layer in list(spectral_layers(model)):
        choice = choices.get(name) or default_layer_lowering(layer, lowering)
        if choice != "fft":
            model.set_submodule(name, lower_layer(layer, choice))
    return model
