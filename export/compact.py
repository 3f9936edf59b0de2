"""Compact export: spectral layers whose kernels are small become circular K×K convolutions.

The paper's finding is that trained NIFF filters, though they could span the whole feature map, are
mostly local. Compacting cuts each chosen layer's kernel (``kernels.py``) to its centred K×K window and
applies it as a circular-padded K×K convolution — depthwise for depthwise layers, full for full filter
banks — so the reference's circular semantics stay. It is an approximation: the layers, the mass they
keep and the measured agreement with the exact model are recorded, and the export's gate checks them.

Compacting happens after baking, on the BatchNorm-folded filters, so a folded BatchNorm stays folded.
Layers on maps below ``MIN_COMPACT_MAP`` stay spectral: there the exact layer is already cheap (ResNet-50's
7×7 layers take well under 1 % of its time, benchmarks/compact_speed.py --layers), while any window that
would save something (K ≤ 5) cuts deep into a kernel that spans the whole map. So do layers whose window
would hold the whole kernel anyway.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from niff_contract import CalibrationRecord, CompactLayer, CompactRecord
from niff_export.errors import ExportError
from niff_export.kernels import FilterLayer, KernelStats, find_filter_layers, measure_layers, spatial_kernels
from niff_export.parity import AgreementReport
from niff_export.spectral import SpectralConv, SpectralMix

MIN_COMPACT_MAP = 8
# ONNX ``Pad`` has mode "wrap" (circular padding in one node) from opset 19.
WRAP_PAD_OPSET = 19


class _WrapPad(torch.autograd.Function):
    """Circular padding that the TorchScript-based ONNX exporter writes as one ``Pad(mode="wrap")`` node.

    torch's own circular padding exports as four Slices and two Concats, which ONNX Runtime runs slower
    (benchmarks/compact_speed.py measures both).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, radius: int) -> Tensor:
        return F.pad(x, (radius, radius, radius, radius), mode="circular")

    @staticmethod
    def symbolic(g: Any, x: Any, radius: int) -> Any:
        pads = g.op("Constant", value_t=torch.tensor([0, 0, radius, radius] * 2, dtype=torch.int64))
        return g.op("Pad", x, pads, mode_s="wrap")


def wrap_pad(x: Tensor, radius: int) -> Tensor:
    return _WrapPad.apply(x, radius)


class CircularConv(nn.Module):
    """A K×K convolution with circular padding: depthwise (``groups`` = channels) or full (``groups`` = 1)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.radius = weight.shape[-1] // 2
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().flatten())

    @classmethod
    def from_spectral(cls, layer: SpectralConv | SpectralMix, kernel: int) -> CircularConv:
        """The layer's kernels cut to their centred ``kernel``×``kernel`` window (bias and folded BatchNorm kept).

        Convolution layers correlate, so the tap at window position (a, b) is the kernel at offset
        (r − a, r − b), r = kernel // 2.
        """
        kernels = spatial_kernels(layer.complex_spectrum())
        taps = (kernel // 2 - torch.arange(kernel)) % layer.size
        window = kernels[..., taps[:, None], taps[None, :]]
        if isinstance(layer, SpectralConv):
            return cls(window.unsqueeze(1), layer.bias, groups=window.shape[0])
        return cls(window.transpose(0, 1), layer.bias, groups=1)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            padded = F.pad(x, [self.radius, self.radius, self.radius, self.radius], mode="circular")
        else:
            padded = wrap_pad(x, self.radius)
        return F.conv2d(padded, self.weight, self.bias, groups=self.groups)

    def extra_repr(self) -> str:
        k = self.weight.shape[-1]
        return f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel={k}x{k}, groups={self.groups}"


@dataclass(frozen=True)
class CompactRequest:
    """What to compact: by L1 mass kept (``mass``), by spectral error (``error``), or to a fixed ``kernel``.

    ``kernel`` together with ``mass`` or ``error`` caps the kernel they pick. The export fails when the
    compact model's top-1 agreement with the exact and eager models on images (the gate's photos and
    the ``calibration`` folder's) is below ``min_agreement``.
    """

    mass: float | None = None
    error: float | None = None
    kernel: int | None = None
    min_agreement: float = 1.0
    calibration: Path | None = None

    def __post_init__(self) -> None:
        if self.mass is None and self.error is None and self.kernel is None:
            raise ExportError("compact export needs --compact MASS, --compact-error E or --compact-kernel K")
        if self.mass is not None and self.error is not None:
            raise ExportError("give --compact or --compact-error, not both (--compact-kernel may cap either)")
        if self.mass is not None and not 0 < self.mass <= 1:
            raise ExportError(f"--compact is the share of each kernel's L1 mass to keep, in (0, 1]; got {self.mass:g}")
        if self.error is not None and not (self.error > 0 and math.isfinite(self.error)):
            raise ExportError(f"--compact-error is a relative spectral error and must be positive; got {self.error:g}")
        if self.kernel is not None and (self.kernel < 1 or self.kernel % 2 == 0):
            raise ExportError(f"--compact-kernel must be an odd positive side (a centred window); got {self.kernel}")
        if not 0 <= self.min_agreement <= 1:
            raise ExportError(f"--compact-min-agreement is a share in [0, 1]; got {self.min_agreement:g}")

    @property
    def mode(self) -> str:
        return "mass" if self.mass is not None else "error" if self.error is not None else "kernel"

    def describe(self) -> str:
        """The request as command-line options."""
        parts = [f"--compact {self.mass:g}"] if self.mass is not None else []
        parts += [f"--compact-error {self.error:g}"] if self.error is not None else []
        parts += [f"--compact-kernel {self.kernel}"] if self.kernel is not None else []
        return " ".join(parts)


def choose(stats: KernelStats, request: CompactRequest) -> CompactLayer:
    """The window a request picks for one layer, or why the layer stays spectral."""
    n = stats.map_size
    if request.mass is not None:
        kernel, wanted = stats.effective_kernel(request.mass), f"{request.mass:g} of the L1 mass"
    elif request.error is not None:
        kernel, wanted = stats.smallest_within_error(request.error), f"a spectral error <= {request.error:g}"
    else:
        kernel, wanted = request.kernel, None
    if request.kernel is not None:
        kernel = min(kernel, request.kernel)
    reason = None
    if n < MIN_COMPACT_MAP:
        reason = f"{n}x{n} map: below {MIN_COMPACT_MAP}x{MIN_COMPACT_MAP} the exact layer costs little"
    elif kernel >= n:
        whole = f"the whole {n}x{n} kernel"
        reason = f"{wanted} needs {whole}" if wanted else f"a {kernel}x{kernel} window holds {whole}"
    if reason is not None:
        return CompactLayer(
            layer=stats.layer,
            kind=stats.kind,
            map_size=n,
            kernel=None,
            mass_kept=1.0,
            energy_kept=1.0,
            spectral_error=0.0,
            reason=reason,
        )
    index = stats.index(kernel)
    return CompactLayer(
        layer=stats.layer,
        kind=stats.kind,
        map_size=n,
        kernel=kernel,
        mass_kept=stats.mass_ratio[index],
        energy_kept=stats.energy_ratio[index],
        spectral_error=stats.spectral_error[index],
    )


@dataclass(frozen=True)
class CompactPlan:
    request: CompactRequest
    size: int
    layers: tuple[CompactLayer, ...]

    @property
    def compacted(self) -> list[CompactLayer]:
        return [c for c in self.layers if c.kernel is not None]

    def table(self) -> str:
        """The export summary's account of every filter layer."""
        lines = [
            f"Compact export ({self.request.describe()}): {len(self.compacted)} of {len(self.layers)} NIFF filter "
            "layers became circular KxK convolutions",
        ]
        width = max(24, *(len(c.layer) + 2 for c in self.layers))
        lines.append(
            f"{'layer':<{width}}{'kind':<11}{'map':>7}  {'kernel':<8}{'L1 mass':>8}{'energy':>8}{'spec err':>10}"
        )
        for c in self.layers:
            head = f"{c.layer:<{width}}{c.kind:<11}{f'{c.map_size}x{c.map_size}':>7}  "
            if c.kernel is None:
                lines.append(f"{head}spectral: {c.reason}")
            else:
                kernel = f"{c.kernel}x{c.kernel}"
                lines.append(f"{head}{kernel:<8}{c.mass_kept:>8.3f}{c.energy_kept:>8.3f}{c.spectral_error:>10.2e}")
        return "\n".join(lines)

    def record(self, agreement: AgreementReport, calibration_images: int | None = None) -> CompactRecord:
        """The ``compact`` block of niff.json: the request, every layer's fate, and the measured agreement."""
        calibration = self.request.calibration
        return CompactRecord(
            mode=self.request.mode,
            mass=self.request.mass,
            error=self.request.error,
            kernel=self.request.kernel,
            layers=self.layers,
            agreement=agreement.record(),
            calibration=None
            if calibration is None
            else CalibrationRecord(folder=calibration.name, images=calibration_images),
        )


def plan_compaction(
    model: nn.Module,
    size: int,
    request: CompactRequest,
    progress: Callable[[int, FilterLayer], None] | None = None,
) -> CompactPlan:
    """Measure every filter layer at ``size`` and choose its window; errors when nothing can be compacted as asked."""
    layers = find_filter_layers(model, size)
    if not layers:
        raise ExportError("the model has no NIFF filter layers (depthwise or full) to compact")
    choices = tuple(choose(stats, request) for _, _, stats in measure_layers(layers, progress))
    if request.kernel is not None and not any(c.kernel is not None for c in choices):
        largest = max(layer.map_size for layer in layers)
        raise ExportError(
            f"--size {size} is too small for --compact-kernel {request.kernel}: compacting needs NIFF feature maps "
            f"of at least {MIN_COMPACT_MAP}x{MIN_COMPACT_MAP} and larger than the kernel, and the largest is "
            f"{largest}x{largest}"
        )
    return CompactPlan(request, size, choices)


def compact_model(baked: fx.GraphModule, plan: CompactPlan) -> fx.GraphModule:
    """A copy of the baked model with the plan's layers as circular K×K convolutions."""
    model = copy.deepcopy(baked)
    for choice in plan.compacted:
        layer = model.get_submodule(choice.layer)
        if not isinstance(layer, (SpectralConv, SpectralMix)):
            raise ExportError(f"{choice.layer}: expected a baked spectral layer there, found {type(layer).__name__}")
        model.set_submodule(choice.layer, CircularConv.from_spectral(layer, choice.kernel))
    return model


def onnx_opset(plan: CompactPlan | None, opset: int | None, default: int) -> int | None:
    """The ONNX opset a compact export needs (``Pad`` mode "wrap"); ``opset`` unchanged without compact layers."""
    if plan is None or not plan.compacted:
        return opset
    if opset is not None and opset < WRAP_PAD_OPSET:
        raise ExportError(f"compact layers use ONNX Pad mode 'wrap', which needs --opset >= {WRAP_PAD_OPSET}")
    return opset or max(default, WRAP_PAD_OPSET)
