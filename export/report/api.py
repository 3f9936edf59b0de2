"""``report_model`` / ``report_checkpoint``: measure, draw, then write ``report.json``, the PNGs and ``report.md``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from niff_export.api import load_model
from niff_export.errors import ExportError
from niff_export.kernels import FilterLayer
from niff_export.options import check_size
from niff_export.report.analysis import KernelReport, analyse_model
from niff_export.report.figures import figures, require_matplotlib
from niff_export.report.markdown import render

# Called before each layer is measured: (index, layer).
LayerProgress = Callable[[int, FilterLayer], None]


@dataclass(frozen=True)
class ReportResult:
    path: Path
    report: KernelReport
    files: tuple[Path, ...]


def report_model(
    model: nn.Module,
    size: int,
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    progress: LayerProgress | None = None,
) -> ReportResult:
    """Analyse ``model`` at ``size``×``size`` and write the report into ``out_dir``.

    Everything is computed and drawn before the first file is written, so a failure leaves nothing behind.
    """
    check_size(size)
    out = Path(out_dir)
    check_out_dir(out)
    require_matplotlib()
    report = analyse_model(model, size, name, progress)
    drawn = figures(report)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = [out / "report.json"]
        files[0].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        for filename, figure in drawn.items():
            figure.savefig(out / filename, dpi=150, bbox_inches="tight")
            files.append(out / filename)
        files.append(out / "report.md")
        files[-1].write_text(render(report), encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return ReportResult(out, report, tuple(files))


def check_out_dir(out: Path) -> None:
    """Refuse, before minutes of measuring, a folder that cannot be made or written: a file in its place or
    in its path, or a read-only parent. Creates nothing (a failed report leaves nothing behind)."""
    existing = out
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        what = "it" if existing == out else str(existing)
        raise ExportError(f"cannot write the report to {out}: {what} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write the report to {out}: {existing} is not writable")


def report_checkpoint(
    checkpoint: str | os.PathLike[str],
    size: int,
    out_dir: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    ema: bool = False,
    progress: LayerProgress | None = None,
) -> ReportResult:
    """Load a checkpoint (``niff.load_checkpoint`` rules) and report on it."""
    check_out_dir(Path(out_dir))
    model = load_model(checkpoint, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, ema=ema)
    name = model.niff_spec.arch or Path(checkpoint).stem
    return report_model(model, size, out_dir, name, progress)
