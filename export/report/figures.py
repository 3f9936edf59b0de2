"""The report's figures (matplotlib, PNG): mass ratio per stage, truncation error, example kernels, effective sizes.

Figures are built as ``matplotlib.figure.Figure`` objects without pyplot, so no display or global
state is involved; ``figures()`` returns them by file name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from niff_export.errors import ExportError
from niff_export.kernels import THRESHOLDS
from niff_export.report.analysis import EXAMPLES, KernelReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The centre this many pixels wide is shown of larger kernels (the paper's figures zoom in the same way).
CROP = 15


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ExportError(
            "niff-report draws its figures with matplotlib, which is not installed: pip install 'niff-deploy[report]'"
        ) from None


def _colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(count - 1, 1)) for i in range(count)]


def mass_figure(report: KernelReport) -> Figure:
    """Kernel-mass ratio (L1, the paper's measure) and energy ratio against K: one curve per stage, ±1 std band."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.6), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    stages = report.stages
    for ax, field, ylabel in (
        (axes[0], "mass", "share of the kernel's L1 mass inside the window"),
        (axes[1], "energy", "share of the kernel's energy (L2²) inside the window"),
    ):
        for stage, color in zip(stages, _colors(len(stages)), strict=True):
            mean, std = stage.pooled(field)
            sizes = stage.layers[0].kernel_sizes
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.plot(sizes, mean, marker="o", markersize=3, color=color, label=stage.label)
            ax.fill_between(sizes, low, high, color=color, alpha=0.15)
        ax.set_xlabel("kernel size K (centred KxK window)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_title("Kernel mass ratio (L1)")
    axes[1].set_title("Kernel energy ratio (L2²)")
    figure.suptitle(f"{report.model} at {report.size}x{report.size}: how much of each kernel a KxK window holds")
    return figure


def error_figure(report: KernelReport) -> Figure:
    """Each layer's relative spectral error of truncating to K×K, coloured by stage."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = figure.subplots()
    stages = report.stages
    for stage, color in zip(stages, _colors(len(stages)), strict=True):
        for index, stats in enumerate(stage.layers):
            ax.plot(
                stats.kernel_sizes,
                stats.spectral_error,
                color=color,
                alpha=0.8,
                marker="o",
                markersize=2,
                label=stage.label if index == 0 else None,
            )
    ax.set_xlabel("kernel size K (centred KxK window)")
    ax.set_ylabel("max_f |H - H_K| / max_f |H|")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{report.model} at {report.size}x{report.size}: spectral error of truncating each layer to KxK")
    return figure


def kernels_figure(report: KernelReport) -> Figure:
    """A grid of centred spatial kernels: one row per stage (its first layer), up to ``EXAMPLES`` kernels each."""
    from matplotlib.figure import Figure

    stages = report.stages
    figure = Figure(figsize=(1.45 * EXAMPLES + 1.2, 1.75 * len(stages) + 0.8), layout="constrained")
    axes = figure.subplots(len(stages), EXAMPLES, squeeze=False)
    for row, stage in zip(axes, stages, strict=True):
        stats = stage.layers[0]
        kernels = report.examples[stats.layer]
        n = stats.map_size
        start = max(0, n // 2 - CROP // 2)
        shown = kernels[:, start : start + CROP, start : start + CROP]
        for column, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(shown):
                ax.set_visible(False)
                continue
            limit = float(shown[column].abs().max()) or 1.0
            ax.imshow(shown[column].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(_kernel_title(stats.kind, column, stats.out_channels), fontsize=8)
        crop = f", centre {shown.shape[-1]}x{shown.shape[-1]}" if shown.shape[-1] < n else ""
        row[0].set_ylabel(f"{stats.layer}\n{n}x{n}{crop}", fontsize=8)
    figure.suptitle(
        f"{report.model} at {report.size}x{report.size}: example spatial kernels per stage "
        "(centred at the origin; red positive, blue negative, scale per kernel)"
    )
    return figure


def _kernel_title(kind: str, index: int, out_channels: int) -> str:
    if kind == "depthwise":
        return f"channel {index}"
    return f"in {index // out_channels}, out {index % out_channels}"


def effective_figure(report: KernelReport) -> Figure:
    """A table of every layer's effective kernel size at 90, 95 and 99 % of the L1 mass."""
    from matplotlib.figure import Figure

    header = ["layer", "kind", "map", "kernels", *(f"K @ {t:.0%}" for t in THRESHOLDS)]
    rows = [
        [
            s.layer,
            s.kind,
            f"{s.map_size}x{s.map_size}",
            str(int(s.mass.shape[0])),
            *(f"{s.effective_kernel(t)}" for t in THRESHOLDS),
        ]
        for s in report.layers
    ]
    figure = Figure(figsize=(8, 0.22 * (len(rows) + 1) + 0.6), layout="constrained")
    ax = figure.subplots()
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(header))))
    ax.set_title(
        f"{report.model} at {report.size}x{report.size}: effective kernel size\n"
        "(smallest odd K whose window holds the share of the L1 mass, mean over the layer's kernels)",
        fontsize=9,
    )
    return figure


FIGURES = {
    "kernel_mass.png": mass_figure,
    "spectral_error.png": error_figure,
    "kernels.png": kernels_figure,
    "effective_kernels.png": effective_figure,
}


def figures(report: KernelReport) -> dict[str, Figure]:
    """Every figure of the report, by file name."""
    require_matplotlib()
    return {name: build(report) for name, build in FIGURES.items()}
