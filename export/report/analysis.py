"""A model's kernel-size analysis: every NIFF filter layer measured at one input size, grouped into stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from niff_export.errors import ExportError
from niff_export.kernels import FilterLayer, KernelStats, centred, find_filter_layers, measure_layers, pooled
from niff_export.spec import resolve_spec

# Kernels per layer kept for the example figure.
EXAMPLES = 8
# How an effective kernel size larger than the layer's map is marked, and what the mark means. On an n×n map
# with n even the last odd window, n+1, wraps around the periodic map: it is the whole kernel.
OVERSIZED_MARK = "*"
OVERSIZED_NOTE = (
    "* exceeds the map: K is larger than the layer's n×n map (n even, K = n+1), so the KxK window wraps "
    "around the periodic map and holds the whole kernel, every tap: the share needs all of the map"
)


def effective_label(stats: KernelStats, share: float) -> str:
    """The effective kernel size at ``share`` as shown in tables: marked when it exceeds the map."""
    kernel = stats.effective_kernel(share)
    return f"{kernel}{OVERSIZED_MARK}" if kernel > stats.map_size else str(kernel)


@dataclass(frozen=True)
class Stage:
    """The filter layers that see one map size: what the paper's figure draws as one curve."""

    map_size: int
    layers: tuple[KernelStats, ...]

    @property
    def label(self) -> str:
        kernels = sum(int(s.mass.shape[0]) for s in self.layers)
        count = len(self.layers)
        return f"{self.map_size}x{self.map_size} maps ({count} layer{'s' * (count != 1)}, {kernels} kernels)"

    def pooled(self, field: Literal["mass", "energy"] = "mass") -> tuple[list[float], list[float]]:
        """Mean and standard deviation over every kernel of the stage."""
        return pooled(list(self.layers), field)


@dataclass(frozen=True)
class KernelReport:
    """Measures of every filter layer of one model at one input size, and a few centred example kernels each."""

    model: str
    size: int
    layers: tuple[KernelStats, ...]
    examples: dict[str, Tensor]

    @property
    def stages(self) -> list[Stage]:
        sizes = list(dict.fromkeys(s.map_size for s in self.layers))
        return [Stage(n, tuple(s for s in self.layers if s.map_size == n)) for n in sizes]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "size": self.size, "layers": [s.to_dict() for s in self.layers]}


def analyse_model(
    model: nn.Module, size: int, name: str | None = None, progress: Callable[[int, FilterLayer], None] | None = None
) -> KernelReport:
    """Measure every depthwise and full NIFF layer of ``model`` at ``size``×``size`` input."""
    if name is None:
        spec = resolve_spec(model, size)
        name = spec.arch or spec.builder
    layers = find_filter_layers(model, size)
    if not layers:
        raise ExportError(f"{name} has no NIFF filter layers (depthwise or full): there are no kernels to measure")
    stats, examples = [], {}
    for layer, kernels, measured in measure_layers(layers, progress):
        stats.append(measured)
        examples[layer.name] = centred(kernels.reshape(-1, layer.map_size, layer.map_size)[:EXAMPLES]).float()
    return KernelReport(name, size, tuple(stats), examples)
