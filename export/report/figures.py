"""The report's figures (matplotlib, PNG): mass ratio per stage, truncation error, example kernels, effective sizes.

Figures are built as ``matplotlib.figure.Figure`` objects without pyplot, so no display or global
state is involved; ``figures()`` returns them by file name.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from niff_export.errors import ExportError
from niff_export.kernels import THRESHOLDS
from niff_export.report.analysis import EXAMPLES, OVERSIZED_NOTE, KernelReport, effective_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The centre this many pixels wide is shown of larger kernels (the paper's figures zoom in the same way).
CROP = 15
# Lines of one stage in the spectral-error figure: colour, marker and line style vary together, so each of up
# to 160 layers has its own combination (10 colours and 8 markers repeat together after 40 layers; the line
# style changes every 10 layers and shifts by one more every 40, which tells those apart).
_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# A legend longer than this many entries gets two columns.
LEGEND_COLUMN = 12
# Row labels of the kernel figure are wrapped at dots to lines of at most this many characters.
LABEL_WIDTH = 22


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


def _layer_style(index: int) -> dict:
    from matplotlib import colormaps

    return {
        "color": colormaps["tab10"](index % 10),
        "marker": _MARKERS[index % len(_MARKERS)],
        "linestyle": _LINE_STYLES[(index // 10 + index // 40) % len(_LINE_STYLES)],
    }


def error_figure(report: KernelReport) -> Figure:
    """Each layer's relative spectral error of truncating to K×K: one panel per stage, each layer its own
    colour, marker and line style, named in the panel's legend."""
    from matplotlib.figure import Figure

    stages = report.stages
    # Each panel is as tall as its legend needs (entries of 7-point text, in one or two columns).
    rows = [-(-len(stage.layers) // (1 if len(stage.layers) <= LEGEND_COLUMN else 2)) for stage in stages]
    heights = [max(2.4, 0.16 * count + 0.9) for count in rows]
    wide = any(len(stage.layers) > LEGEND_COLUMN for stage in stages)
    figure = Figure(figsize=(11.5 if wide else 9.5, sum(heights) + 0.5), layout="constrained")
    axes = figure.subplots(len(stages), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, stage in zip(axes, stages, strict=True):
        for index, stats in enumerate(stage.layers):
            ax.plot(
                stats.kernel_sizes,
                stats.spectral_error,
                alpha=0.9,
                markersize=4,
                linewidth=1.2,
                label=stats.layer,
                **_layer_style(index),
            )
        n, sizes = stage.map_size, stage.layers[0].kernel_sizes
        title = stage.label
        if sizes[-1] > n:  # the last window of an even map wraps around it: shaded, and said in the title
            ax.axvspan(n, sizes[-1] + 0.5, color="0.85", alpha=0.6, linewidth=0)
            title += f"; shaded: K={sizes[-1]} exceeds the {n}x{n} map (the whole kernel)"
        ax.set_xticks(sizes[:: -(-len(sizes) // 15)])
        ax.set_xlim(0.5, sizes[-1] + 0.5)
        ax.set_ylim(bottom=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("kernel size K (centred KxK window)", fontsize=8)
        ax.set_ylabel("max_f |H - H_K| / max_f |H|", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
            ncols=1 if len(stage.layers) <= LEGEND_COLUMN else 2,
            title="layer",
            title_fontsize=7,
        )
    figure.suptitle(
        f"{report.model} at {report.size}x{report.size}: spectral error of truncating each layer to KxK "
        "(one panel per map size)"
    )
    return figure


def kernels_figure(report: KernelReport) -> Figure:
    """A grid of centred spatial kernels: one row per stage (its first layer), up to ``EXAMPLES`` kernels each.

    Row labels are horizontal, wrapped at dots, left of the row: legible however long the layer names are.
    """
    from matplotlib.figure import Figure

    stages = report.stages
    figure = Figure(figsize=(1.45 * EXAMPLES + 2.4, 1.75 * len(stages) + 0.8), layout="constrained")
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
        row[0].set_ylabel(
            f"{wrap_name(stats.layer)}\n{n}x{n}{crop}", fontsize=8, rotation=0, ha="right", va="center", labelpad=6
        )
    figure.suptitle(
        f"{report.model} at {report.size}x{report.size}: example spatial kernels per stage "
        "(centred at the origin; red positive, blue negative, scale per kernel)"
    )
    return figure


def wrap_name(name: str, width: int = LABEL_WIDTH) -> str:
    """A dotted layer name on lines of at most ``width`` characters where it can, broken after a dot; the
    lines joined without a separator give the name back."""
    lines = [""]
    for part in name.split("."):
        piece = part if not lines[-1] else f".{part}"
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines[-1] += "."
            lines.append(part)
        else:
            lines[-1] += piece
    return "\n".join(lines)


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
            *(effective_label(s, t) for t in THRESHOLDS),
        ]
        for s in report.layers
    ]
    oversized = any(cell.endswith("*") for row in rows for cell in row[4:])
    figure = Figure(figsize=(8, 0.22 * (len(rows) + 1) + 0.6 + 0.3 * oversized), layout="constrained")
    ax = figure.subplots()
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(header))))
    for (row, column), cell in table.get_celld().items():
        if row > 0 and column >= 4 and cell.get_text().get_text().endswith("*"):
            cell.set_facecolor("#fde2c4")
    if oversized:
        figure.text(0.5, 0.005, textwrap.fill(OVERSIZED_NOTE, 110), ha="center", va="bottom", fontsize=7)
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
