"""The spatial kernels of NIFF filter layers, and how much of each a small centred window holds.

At an n×n feature map a depthwise NIFF layer convolves every channel circularly with a real n×n kernel,
and a full layer convolves every (input, output) channel pair: the inverse transform of the layer's
exact baked filter (``spectral.depthwise_spectrum``/``mixing_spectrum``, every shift and channel roll
of the reference folded in). These measures say how small those kernels really are (the paper's
question) and decide what compact export may truncate; ``niff-report`` shows the same numbers.

Windows are sets of circular offsets: the K×K window (K odd) holds the taps whose offsets ``(dy, dx)``
from the kernel's origin satisfy ``max(|dy|, |dx|) <= (K - 1) / 2`` on the n-periodic grid, so windows
never count a tap twice and the largest one, K = 2·(n // 2) + 1, holds the whole kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from niff.layers import FreqConvDW, FreqConvFull
from niff_export.errors import ExportError
from niff_export.spectral import depthwise_spectrum, mixing_spectrum

FilterKind = Literal["depthwise", "full"]
# Shares of the mass that define a layer's effective kernel size (the smallest odd K holding them).
THRESHOLDS: tuple[float, ...] = (0.9, 0.95, 0.99)


@dataclass(frozen=True)
class FilterLayer:
    """One NIFF filter layer of a model and the side of the feature map it sees."""

    name: str
    module: FreqConvDW | FreqConvFull
    map_size: int

    @property
    def kind(self) -> FilterKind:
        return "depthwise" if isinstance(self.module, FreqConvDW) else "full"

    @property
    def in_channels(self) -> int:
        return self.module.planes if isinstance(self.module, FreqConvDW) else self.module.in_planes

    @property
    def out_channels(self) -> int:
        return self.module.planes if isinstance(self.module, FreqConvDW) else self.module.out_planes

    def spectrum(self) -> Tensor:
        """The exact half spectrum (complex128): [C, n, n//2+1] or [C_in, C_out, n, n//2+1], input channel first."""
        if isinstance(self.module, FreqConvDW):
            return depthwise_spectrum(self.module, self.map_size)
        return mixing_spectrum(self.module, self.map_size)

    def kernels(self) -> Tensor:
        """The real circular-convolution kernels, [C, n, n] or [C_in, C_out, n, n], origin at index [0, 0]."""
        return spatial_kernels(self.spectrum())


def spatial_kernels(spectrum: Tensor) -> Tensor:
    """Kernels with origin at [0, 0] from a half spectrum [..., n, n//2+1]: ``y = x ⊛ k`` circularly."""
    n = spectrum.shape[-2]
    return torch.fft.irfft2(spectrum, s=(n, n))


def centred(kernels: Tensor) -> Tensor:
    """Kernels moved so the origin sits at [n//2, n//2], for display."""
    return torch.fft.fftshift(kernels, dim=(-2, -1))


def find_filter_layers(model: nn.Module, size: int, example: Tensor | None = None) -> list[FilterLayer]:
    """Every depthwise and full NIFF layer with its map size at ``size``×``size`` input, in execution order.

    ``example`` overrides the default [1, 3, size, size] input (for a lone layer). Pointwise NIFF layers
    are channel mixes with no spatial extent and are not listed.
    """
    sizes: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        sizes.setdefault(module, int(args[0].shape[-1]))

    names = {module: name for name, module in model.named_modules() if isinstance(module, (FreqConvDW, FreqConvFull))}
    hooks = [module.register_forward_pre_hook(record) for module in names]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size) if example is None else example[:1])
    except Exception as exc:
        raise ExportError(f"the model cannot run at {size}x{size}: {exc}") from exc
    finally:
        for hook in hooks:
            hook.remove()
    return [FilterLayer(names[module], module, n) for module, n in sizes.items()]


def offset_radius(n: int) -> Tensor:
    """[n, n] Chebyshev distance of each tap from the origin on the n-periodic grid (origin at [0, 0])."""
    d = torch.arange(n)
    d = torch.minimum(d, n - d)
    return torch.maximum(d[:, None], d[None, :])


def kernel_sizes(n: int) -> tuple[int, ...]:
    """The odd window sides 1, 3, … up to the first that holds the whole n×n kernel."""
    return tuple(2 * r + 1 for r in range(n // 2 + 1))


def window_shares(weights: Tensor) -> Tensor:
    """[..., n, n] non-negative tap weights → [..., R]: the share inside each odd window (1 for an all-zero kernel)."""
    n = weights.shape[-1]
    radius = offset_radius(n).flatten()
    flat = weights.flatten(-2)
    rings = torch.zeros(*flat.shape[:-1], n // 2 + 1, dtype=flat.dtype).index_add_(-1, radius, flat)
    inside = rings.cumsum(-1)
    total = inside[..., -1:]
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1), torch.ones_like(inside))


def _gain(spectrum: Tensor, kind: FilterKind) -> Tensor:
    """The layer's gain at each frequency: |H| for depthwise, the spectral norm of the channel mix for full."""
    if kind == "depthwise":
        return spectrum.abs().amax(0)
    return torch.linalg.matrix_norm(spectrum.permute(2, 3, 0, 1), ord=2)


def spectral_errors(kernels: Tensor, kind: FilterKind) -> tuple[float, ...]:
    """Per odd K: ``max_f ‖H(f) − H_K(f)‖ / max_f ‖H(f)‖``, H_K the spectrum of the kernels cut to the K window.

    By Parseval it bounds the truncated layer's output error relative to the layer's largest gain:
    ``‖y − y_K‖₂ ≤ error · max_f ‖H(f)‖ · ‖x‖₂``.
    """
    n = kernels.shape[-1]
    radius = offset_radius(n)
    peak = float(_gain(torch.fft.rfft2(kernels), kind).max())
    if peak == 0:
        return tuple(0.0 for _ in kernel_sizes(n))
    errors = []
    for r in range(n // 2 + 1):
        outside = torch.fft.rfft2(kernels * (radius > r))
        errors.append(float(_gain(outside, kind).max()) / peak)
    return tuple(errors)


@dataclass(frozen=True)
class KernelStats:
    """A layer's kernels measured against every odd window: per-kernel shares and the layer's spectral error."""

    layer: str
    kind: FilterKind
    map_size: int
    in_channels: int
    out_channels: int
    kernel_sizes: tuple[int, ...]
    mass: Tensor  # [kernels, R] share of each kernel's L1 mass inside each window (the paper's measure)
    energy: Tensor  # [kernels, R] share of each kernel's energy (squared L2) inside each window
    spectral_error: tuple[float, ...]

    @property
    def mass_ratio(self) -> list[float]:
        return self.mass.mean(0).tolist()

    @property
    def mass_ratio_std(self) -> list[float]:
        return self.mass.std(0, correction=0).tolist()

    @property
    def energy_ratio(self) -> list[float]:
        return self.energy.mean(0).tolist()

    @property
    def energy_ratio_std(self) -> list[float]:
        return self.energy.std(0, correction=0).tolist()

    def index(self, kernel: int) -> int:
        """Position of window side ``kernel`` (clamped to the largest, which holds everything)."""
        return min((kernel - 1) // 2, len(self.kernel_sizes) - 1)

    def effective_kernel(self, share: float) -> int:
        """The smallest odd K whose window holds ``share`` of the L1 mass, averaged over the layer's kernels."""
        return next(k for k, m in zip(self.kernel_sizes, self.mass_ratio, strict=True) if m >= share - 1e-12)

    def smallest_within_error(self, error: float) -> int:
        """The smallest odd K whose truncation's spectral error is at most ``error``."""
        return next(k for k, e in zip(self.kernel_sizes, self.spectral_error, strict=True) if e <= error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.layer,
            "kind": self.kind,
            "map_size": self.map_size,
            "channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernels": int(self.mass.shape[0]),
            "kernel_sizes": list(self.kernel_sizes),
            "mass_ratio": self.mass_ratio,
            "mass_ratio_std": self.mass_ratio_std,
            "energy_ratio": self.energy_ratio,
            "energy_ratio_std": self.energy_ratio_std,
            "spectral_error": list(self.spectral_error),
            "effective_kernel": {f"{t:g}": self.effective_kernel(t) for t in THRESHOLDS},
        }


def measure(layer: FilterLayer, kernels: Tensor | None = None) -> KernelStats:
    """All measures of one layer (``kernels`` may be passed when the caller already computed them)."""
    kernels = layer.kernels() if kernels is None else kernels
    n = layer.map_size
    flat = kernels.reshape(-1, n, n)
    return KernelStats(
        layer=layer.name,
        kind=layer.kind,
        map_size=n,
        in_channels=layer.in_channels,
        out_channels=layer.out_channels,
        kernel_sizes=kernel_sizes(n),
        mass=window_shares(flat.abs()),
        energy=window_shares(flat.square()),
        spectral_error=spectral_errors(kernels, layer.kind),
    )


def measure_layers(
    layers: list[FilterLayer], progress: Callable[[int, FilterLayer], None] | None = None
) -> Iterator[tuple[FilterLayer, Tensor, KernelStats]]:
    """Each layer with its kernels and measures, one at a time (a full layer's kernels can take hundreds of MB)."""
    for index, layer in enumerate(layers):
        if progress:
            progress(index, layer)
        kernels = layer.kernels()
        yield layer, kernels, measure(layer, kernels)


def pooled(stats: list[KernelStats], field: Literal["mass", "energy"] = "mass") -> tuple[list[float], list[float]]:
    """Mean and standard deviation over every kernel of layers with the same map size (a stage)."""
    shares = torch.cat([getattr(s, field) for s in stats])
    return shares.mean(0).tolist(), shares.std(0, correction=0).tolist()
