"""``niff-report``: a NIFF checkpoint in, the paper's kernel-size analysis out (JSON, PNG figures, Markdown)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from niff_export.cli_common import add_checkpoint_options, checkpoint_arguments, run
from niff_export.kernels import THRESHOLDS, FilterLayer
from niff_export.report.analysis import OVERSIZED_NOTE, effective_label
from niff_export.report.api import ReportResult, report_checkpoint

DESCRIPTION = """\
Measure how large the kernels of a NIFF checkpoint really are, as the paper does, on your own checkpoint.

Every depthwise and full NIFF layer is evaluated at the feature-map size it sees for a --size input; its
spatial kernels (the circular-convolution kernels it applies, impulse responses with every shift of the
reference included) are measured against centred odd KxK windows: the kernel-mass ratio (share of the L1
mass inside, the paper's measure), the energy ratio (L2 squared), the relative spectral error of cutting the
kernel to the window, and the effective kernel size (smallest K holding 90 / 95 / 99 % of the mass).
Writes OUT/report.json, OUT/report.md and four PNG figures. niff-export --compact/--compact-error/
--compact-kernel chooses windows from the same numbers.
"""

EPILOG = """\
examples:
  niff-report resnet50_split.pth --size 224 --out report/
  niff-report ckpt.pt --size 32 --arch resnet18_split --out cifar_report/
"""


PROG = "niff-report"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_checkpoint_options(parser, "analyse")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the report into")
    return parser


def _show_layer(index: int, layer: FilterLayer) -> None:
    """A progress line per layer on stderr (a full ResNet-50 takes minutes)."""
    kernels = layer.in_channels if layer.kind == "depthwise" else layer.in_channels * layer.out_channels
    where = f"{layer.kind}, {kernels} kernels at {layer.map_size}x{layer.map_size}"
    print(f"  [{index + 1}] measuring {layer.name} ({where})", file=sys.stderr, flush=True)


def _summary(result: ReportResult, elapsed: float) -> str:
    report = result.report
    lines = [
        f"Kernel sizes of {report.model} at {report.size}x{report.size} ({len(report.layers)} filter layers, "
        f"{elapsed:.1f} s):",
        f"{'layer':<40}{'kind':<11}{'map':>7}" + "".join(f"{f'K@{t:.0%}':>8}" for t in THRESHOLDS),
    ]
    for s in report.layers:
        lines.append(
            f"{s.layer:<40}{s.kind:<11}{f'{s.map_size}x{s.map_size}':>7}"
            + "".join(f"{effective_label(s, t):>8}" for t in THRESHOLDS)
        )
    if any(s.effective_kernel(t) > s.map_size for s in report.layers for t in THRESHOLDS):
        lines.append(OVERSIZED_NOTE)
    lines += ["", "Wrote:", *(f"  {path}" for path in result.files)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(PROG, lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print(f"{PROG}: {args.checkpoint} at {args.size}x{args.size}", file=sys.stderr, flush=True)
    result = report_checkpoint(args.checkpoint, args.size, args.out, progress=_show_layer, **checkpoint_arguments(args))
    print(_summary(result, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
