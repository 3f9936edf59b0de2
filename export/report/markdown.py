"""``report.md``: the figures and the effective-size table, with the definitions a reader needs."""

from __future__ import annotations

from niff_export.kernels import THRESHOLDS
from niff_export.report.analysis import OVERSIZED_NOTE, KernelReport, effective_label

# Window sides whose mass and error the Markdown table shows beside the effective sizes.
SHOWN_KERNEL = 7


def render(report: KernelReport) -> str:
    kinds = [s.kind for s in report.layers]
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in ("depthwise", "full") if k in kinds)
    k = SHOWN_KERNEL
    lines = [
        f"# Kernel sizes: {report.model} at {report.size}x{report.size}",
        "",
        f"{len(report.layers)} NIFF filter layers ({counts}), each at the feature-map size it sees for a "
        f"{report.size}x{report.size} input. A layer's spatial kernels are the real circular-convolution kernels "
        "it applies to each channel (each input-output pair for a full layer): its impulse responses, every "
        "shift and channel roll of the reference included. Windows are odd KxK squares centred on the kernel's "
        "origin.",
        "",
        "- **Kernel mass ratio** (the paper's measure): the share of a kernel's L1 mass (sum of |k|) inside "
        "the window; mean and standard deviation over kernels.",
        "- **Energy ratio**: the same share of the squared kernel (sum of k²).",
        "- **Spectral error**: max over frequencies of |H - H_K| / max over frequencies of |H|, H the layer's "
        "filter and H_K that of its kernels cut to the window (for a full layer, |.| is the spectral norm of the "
        "channel mix). By Parseval it bounds the cut layer's output error relative to the layer's largest gain.",
        "- **Effective kernel size**: the smallest odd K whose window holds 90 / 95 / 99 % of the L1 mass, "
        "averaged over the layer's kernels.",
        "",
        "![Kernel mass ratio per stage](kernel_mass.png)",
        "",
        "![Spectral error of truncating to KxK](spectral_error.png)",
        "",
        "![Example spatial kernels per stage](kernels.png)",
        "",
        "## Effective kernel sizes",
        "",
        "| layer | kind | map | kernels | "
        + " | ".join(f"K @ {t:.0%}" for t in THRESHOLDS)
        + f" | L1 mass in {k}x{k} | spectral error at {k}x{k} |",
        "|---|---|---:|---:|" + "---:|" * len(THRESHOLDS) + "---:|---:|",
    ]
    for s in report.layers:
        sizes = " | ".join(effective_label(s, t).replace("*", "\\*") for t in THRESHOLDS)
        index = s.index(k)
        lines.append(
            f"| `{s.layer}` | {s.kind} | {s.map_size}x{s.map_size} | {int(s.mass.shape[0])} | {sizes} | "
            f"{s.mass_ratio[index]:.3f} | {s.spectral_error[index]:.3f} |"
        )
    if any(s.effective_kernel(t) > s.map_size for s in report.layers for t in THRESHOLDS):
        lines += ["", OVERSIZED_NOTE.replace("*", "\\*", 1) + "."]
    lines += [
        "",
        "The same table as an image: `effective_kernels.png`. Every number: `report.json`.",
        "",
    ]
    return "\n".join(lines)
