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
from niff_export.images import SAMPLE_PHOTOS
from niff_export.kernels import FilterLayer, KernelStats, find_filter_layers, measure_layers, spatial_kernels
from niff_export.options import option
from niff_export.parity import AgreementReport
from niff_export.spectral import SpectralConv, SpectralMix

MIN_COMPACT_MAP = 8
# ONNX ``Pad`` has mode "wrap" (circular padding in one node) from opset 19.
WRAP_PAD_OPSET = 19


class _WrapPad(torch.autograd.Function):
    """Circular padding that the TorchScript-based ONNX exporter writes as one ``Pad(mode="wrap")`` node.

    torch's own circular padding exports as four Slices and two Concats, which ONNX Runtime runs slower
    (benchmarks/compact_speed.py measures both) but which, unlike mode "wrap", OpenVINO reads: the
    export's target picks the form (``CircularConv.wrap``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, radius: int) -> Tensor:
        return F.pad(x, (radius, radius, radius, radius), mode="circular")

    @staticmethod
    def symbolic(g: Any, x: Any, radius: int) -> Any:
        pads = g.op("Constant", value_t=torch.tensor([0, 0, radius, radius] * 2, dtype=torch.int64))
        return g.op("Pad", x, pads, mode_s="wrap")


@torch.jit.unused
def wrap_pad(x: Tensor, radius: int) -> Tensor:
    return _WrapPad.apply(x, radius)


class CircularConv(nn.Module):
    """A K×K convolution with circular padding: depthwise (``groups`` = channels) or full (``groups`` = 1).

    ``wrap`` says how ONNX receives the padding: one ``Pad(mode="wrap")`` (ONNX Runtime's fastest form), or
    torch's Slices and Concats, which every runtime reads. Eager and TorchScript compute the same either way.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, groups: int, wrap: bool = True) -> None:
        super().__init__()
        self.groups = groups
        self.wrap = wrap
        self.radius = weight.shape[-1] // 2
        self.register_buffer("weight", weight.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().flatten())

    @classmethod
    def from_spectral(cls, layer: SpectralConv | SpectralMix, kernel: int, wrap: bool = True) -> CircularConv:
        """The layer's kernels cut to their centred ``kernel``×``kernel`` window (bias and folded BatchNorm kept).

        Convolution layers correlate, so the tap at window position (a, b) is the kernel at offset
        (r − a, r − b), r = kernel // 2.
        """
        kernels = spatial_kernels(layer.complex_spectrum())
        taps = (kernel // 2 - torch.arange(kernel)) % layer.size
        window = kernels[..., taps[:, None], taps[None, :]]
        if isinstance(layer, SpectralConv):
            return cls(window.unsqueeze(1), layer.bias, groups=window.shape[0], wrap=wrap)
        return cls(window.transpose(0, 1), layer.bias, groups=1, wrap=wrap)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or not self.wrap:
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

    ``kernel`` together with ``mass`` or ``error`` caps the kernel they pick. The user's images, when given,
    decide the gate: in a ``calibration`` folder laid out as ``DIR/<class name>/<image>``, the compact
    model's top-1 accuracy may fall at most ``max_accuracy_drop`` (a share) below the exact model's; in a
    flat folder, its top-1 agreement with the exact and eager models must reach ``min_agreement``. Without
    them, its agreement on the gate's two generic photos must.
    """

    mass: float | None = option(
        None,
        flag="--compact",
        metavar="MASS",
        parse=float,
        help="compact every spectral layer whose kernels keep MASS (0 < MASS <= 1) of their L1 mass inside some "
        "odd KxK window, with the smallest such K",
    )
    error: float | None = option(
        None,
        flag="--compact-error",
        metavar="E",
        parse=float,
        help="instead of --compact: per layer the smallest K whose relative spectral error is <= E",
    )
    kernel: int | None = option(
        None,
        flag="--compact-kernel",
        metavar="K",
        parse=int,
        help="odd window side: alone, every layer gets KxK; with --compact/--compact-error, K caps their choice",
    )
    min_agreement: float = option(
        1.0,
        flag="--compact-min-agreement",
        metavar="A",
        parse=float,
        help="least top-1 agreement (0..1) of the compact model with the exact one on a flat --calibration "
        "folder, or without --calibration on the built-in photos (default: {default}; 0 accepts anything)",
    )
    calibration: Path | None = option(  # noqa: RUF009 (option is dataclasses.field with metadata)
        None,
        metavar="DIR",
        parse=Path,
        help="your images from the model's domain, which then decide the gate (the built-in photos are only "
        "reported): as DIR/<class name>/<image> (class names = the model's labels) the gate is the top-1 "
        "accuracy drop (--compact-max-accuracy-drop); a flat folder of images gates on agreement "
        "(--compact-min-agreement)",
    )
    max_accuracy_drop: float = option(
        0.0,
        flag="--compact-max-accuracy-drop",
        metavar="D",
        parse=float,
        help="with labelled --calibration images: the largest share by which the compact model's top-1 accuracy "
        "may fall below the exact model's (default: {default}, nothing lost; 0.005 = half a point)",
    )

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
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ExportError(
                "--compact-max-accuracy-drop is a share in [0, 1] (0.005 = half a point); got "
                f"{self.max_accuracy_drop:g}"
            )
        if self.max_accuracy_drop and self.calibration is None:
            raise ExportError(
                "--compact-max-accuracy-drop gates the top-1 accuracy on labelled images: give them with "
                "--calibration DIR (DIR/<class name>/<image>)"
            )

    def check_calibration(self, labelled: bool) -> None:
        """Each gate option applies to one kind of calibration folder: refuse one that would be ignored."""
        if labelled and self.min_agreement != 1.0:
            raise ExportError(
                f"--calibration {self.calibration} holds labelled images, so the gate is the top-1 accuracy drop "
                "(--compact-max-accuracy-drop), not --compact-min-agreement, which gates agreement on unlabelled "
                "images: leave it out"
            )
        if not labelled and self.max_accuracy_drop:
            raise ExportError(
                f"--compact-max-accuracy-drop needs labelled images, but --calibration {self.calibration} is a flat "
                "folder of images: arrange them as DIR/<class name>/<image> (class names = the model's labels), or "
                "gate on agreement with --compact-min-agreement instead"
            )

    @property
    def mode(self) -> str:
        return "mass" if self.mass is not None else "error" if self.error is not None else "kernel"

    def describe(self) -> str:
        """The request as command-line options."""
        parts = [f"--compact {self.mass:g}"] if self.mass is not None else []
        parts += [f"--compact-error {self.error:g}"] if self.error is not None else []
        parts += [f"--compact-kernel {self.kernel}"] if self.kernel is not None else []
        parts += [f"--calibration {self.calibration}"] if self.calibration is not None else []
        parts += [f"--compact-min-agreement {self.min_agreement:g}"] if self.min_agreement != 1.0 else []
        parts += [f"--compact-max-accuracy-drop {self.max_accuracy_drop:g}"] if self.max_accuracy_drop else []
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
        """The ``compact`` block of niff.json: the request, every layer's fate, the measured agreement and, on
        labelled calibration images, both models' correct counts."""
        folder, accuracy = self.request.calibration, agreement.accuracy
        counts = (
            {}
            if accuracy is None
            else {
                "labelled": True,
                "exact_correct": accuracy.exact_correct,
                "compact_correct": accuracy.compact_correct,
                "max_accuracy_drop": accuracy.max_drop,
            }
        )
        return CompactRecord(
            mode=self.request.mode,
            mass=self.request.mass,
            error=self.request.error,
            kernel=self.request.kernel,
            layers=self.layers,
            agreement=agreement.record(),
            calibration=None
            if folder is None
            else CalibrationRecord(folder=Path(folder).name, images=calibration_images, **counts),
        )

    def gate_failure(self, agreement: AgreementReport) -> str:
        """Why a compact export failed its gate, the plan and the measurements, and how to proceed."""
        compact_less = "compact less (a larger --compact MASS or --compact-kernel K, a smaller --compact-error E)"
        accuracy, folder = agreement.accuracy, self.request.calibration
        if accuracy is not None:
            allow = math.ceil(round(accuracy.drop * 1000, 6)) / 1000
            head = (
                f"the compact model's top-1 accuracy on the labelled calibration images drops "
                f"{100 * accuracy.drop:.2f} points, more than --compact-max-accuracy-drop {accuracy.max_drop:g} allows"
            )
            advice = (
                f"To proceed: {compact_less}, or accept the drop with --compact-max-accuracy-drop {allow:g} (a share: "
                f"{100 * allow:g} points; Python: CompactRequest(max_accuracy_drop={allow:g}))."
            )
        elif agreement.gated == ("calibration",):
            head = (
                f"the compact model's top-1 agreement on the calibration images ({folder}) is below "
                f"--compact-min-agreement {agreement.min_agreement:g}"
            )
            advice = (
                f"To proceed: {compact_less}, accept less agreement with --compact-min-agreement, or label the "
                "images (DIR/<class name>/<image>) to gate on the accuracy drop instead: a changed class need not "
                "be a wrong one."
            )
        else:
            head = (
                "the compact model's top-1 agreement on the gate's photos is below --compact-min-agreement "
                f"{agreement.min_agreement:g}"
            )
            advice = (
                f"The photos are {SAMPLE_PHOTOS}, which say little about a model for other images. Pass "
                "--calibration DIR with images from the model's domain and they decide the gate instead: labelled "
                "(DIR/<class name>/<image>, class names = the model's labels) to gate on the top-1 accuracy drop "
                "(--compact-max-accuracy-drop, default 0), or a flat folder of images to gate on agreement."
            )
        return f"{head}; nothing was written.\n{self.table()}\n\n{agreement.table()}\n\n{advice}"


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


def compact_model(baked: fx.GraphModule, plan: CompactPlan, wrap: bool = True) -> fx.GraphModule:
    """A copy of the baked model with the plan's layers as circular K×K convolutions (``wrap``: their
    padding in ONNX, see ``CircularConv``)."""
    model = copy.deepcopy(baked)
    for choice in plan.compacted:
        layer = model.get_submodule(choice.layer)
        if not isinstance(layer, (SpectralConv, SpectralMix)):
            raise ExportError(f"{choice.layer}: expected a baked spectral layer there, found {type(layer).__name__}")
        model.set_submodule(choice.layer, CircularConv.from_spectral(layer, choice.kernel, wrap))
    return model


def onnx_opset(plan: CompactPlan | None, opset: int | None, default: int, wrap: bool = True) -> int | None:
    """The ONNX opset a compact export padding with ``Pad`` mode "wrap" needs; ``opset`` unchanged otherwise."""
    if plan is None or not plan.compacted or not wrap:
        return opset
    if opset is not None and opset < WRAP_PAD_OPSET:
        raise ExportError(f"compact layers use ONNX Pad mode 'wrap', which needs --opset >= {WRAP_PAD_OPSET}")
    return opset or max(default, WRAP_PAD_OPSET)
