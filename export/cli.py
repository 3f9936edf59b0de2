"""``niff-export``: a checkpoint in, a parity-checked model-repository folder out."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import niff
from niff_export.api import (
    PREPROCESSING_OPTIONS,
    ExportOptions,
    ExportResult,
    export_checkpoint,
    installed_versions,
    planned_preprocessing,
)
from niff_export.cli_common import (
    add_checkpoint_options,
    add_record_options,
    checkpoint_arguments,
    record_from_args,
    run,
)
from niff_export.parity import default_tolerance
from niff_export.runtimes import OPENVINO_INSTALL

PROG = "niff-export"

DESCRIPTION = """\
Export a NIFF checkpoint (trained with the paper's code or ours) for deployment.

Every layer's frequency filter is evaluated once at the given input size and baked in; the algebra is
simplified exactly (FFT-1x1-IFFT becomes a 1x1 conv, BatchNorm folds into the preceding layer), the
transforms are lowered to operations runtimes run fast, and ONNX and TorchScript files are written into
OUT/NAME/ as a model-repository folder (Triton/KServe layout, served by niff-serve). Before anything is
written, the artifacts must reproduce the eager model on random inputs and real photos (relative error
<= 1e-4 in float32, 1e-2 with --fp16, same top-1 on the photos); otherwise the export fails, and says
whether the model is ill-conditioned (eager float32 itself drifts from float64 as far) or the export wrong.
For an ill-conditioned model, --parity-tolerance accepts a looser gate, recorded in niff.json.

Compact export (--compact, --compact-error, --compact-kernel) is an opt-in approximation: spectral layers
whose kernels are small become circular-padded KxK convolutions (faster; niff-report shows the kernels).
The artifacts must then reproduce the compact model exactly, and your images decide whether the
approximation is good enough: with --calibration DIR/<class name>/<image> (labelled), the compact model's
top-1 accuracy may fall at most --compact-max-accuracy-drop (default 0) below the exact model's; with a
flat --calibration folder, its top-1 agreement with the exact model must reach --compact-min-agreement
(default 1). Without --calibration, its agreement on two generic photos decides, which says little about
a model for other images. niff.json records every layer's kernel, the mass it keeps and the gate.
"""

EPILOG = """\
examples:
  niff-export resnet50_split.pth --size 224
  niff-export ckpt.pt --size 224 --arch convnext_tiny --ema --out ./models
  niff-export ckpt.pt --size 32 --format onnx --fft dft --name cifar_resnet
  niff-export ckpt2.pt --size 224 --model-version 2   # beside version 1, which stays (docs: Rollout)
  niff-export resnet50_split.pth --size 224 --tune    # time each spectral layer's lowerings here
  niff-export ckpt.pt --size 224 --compact 0.8 --calibration val/   # val/<class name>/<image>: no accuracy lost
  niff-export ckpt.pt --size 224 --compact-kernel 7 --calibration val/ --compact-max-accuracy-drop 0.005
  niff-export ckpt.pt --size 224 --compact-kernel 7 --calibration unlabelled/ --compact-min-agreement 0.99
"""


def _version() -> str:
    versions = installed_versions()
    using = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "niff")
    return f"niff-export {versions.get('niff', '0+unknown')} ({using})"


def build_parser() -> argparse.ArgumentParser:
    """The checkpoint options, --name and --out, then one option per ``ExportOptions`` field."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_options(parser, "export")
    parser.add_argument("--name", help="model name, the folder and URL name (default: the architecture's name)")
    parser.add_argument(
        "--out", type=Path, default=Path("models"), help="model repository to write into (default: ./models)"
    )
    add_record_options(parser, ExportOptions)
    parser.add_argument("--version", action="version", dest="program_version", version=_version())
    return parser


class _ProgressPrinter:
    """Numbered stage lines on stderr: '[2/5] Baking filters at 224x224 … 3.1 s'."""

    def __init__(self) -> None:
        self.in_line = False  # a stage's line is waiting for its time

    def __call__(self, message: str, seconds: float | None, done: int, total: int) -> None:
        if seconds is None:
            print(f"[{done}/{total}] {message} …", end="", file=sys.stderr, flush=True)
        else:
            print(f" {seconds:.1f} s", file=sys.stderr, flush=True)
        self.in_line = seconds is None

    def end_line(self) -> None:
        """Before a message of its own: end a stage line left open (by an error)."""
        if self.in_line:
            print(file=sys.stderr)
            self.in_line = False


def _preprocessing_line(spec: niff.ModelSpec, size: int, overrides: Mapping[str, object]) -> str:
    """The preprocessing the export records, and where each part comes from: the options, the checkpoint's
    metadata, or else the architecture's defaults (then said, since a model trained otherwise would be
    served wrong)."""
    used = planned_preprocessing(spec, size, overrides)
    from_checkpoint = set(spec.preprocessing_from_checkpoint)
    numbers = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
    line = (
        f"Preprocessing: input {used.input_size}x{used.input_size}, resize {used.resize}, crop_pct {used.crop_pct:g}, "
        f"{used.interpolation} interpolation, mean {numbers(used.mean)}, std {numbers(used.std)}"
    )
    defaults = [f for f in PREPROCESSING_OPTIONS if f not in overrides and f not in from_checkpoint]
    if not defaults:
        sources = [name for name, given in (("the checkpoint", from_checkpoint), ("the options", overrides)) if given]
        return f"{line} (from {' and '.join(sources)})"
    one = len(defaults) == 1
    imagenet = niff.Preprocessing()
    if all(getattr(used, f) == getattr(imagenet, f) for f in defaults):
        kind = "the ImageNet default" if one else "ImageNet defaults"
    else:
        kind = f"the default{'' if one else 's'} of {spec.arch or spec.builder}"
    if len(defaults) < len(PREPROCESSING_OPTIONS):
        kind = f"{', '.join(defaults)} {'is' if one else 'are'} {kind}"
    if from_checkpoint & set(PREPROCESSING_OPTIONS):
        why = f"{kind}: the checkpoint's preprocessing metadata does not set {'it' if one else 'them'}"
    else:
        why = f"{kind}: the checkpoint has no preprocessing metadata"
    flags = ", ".join(PREPROCESSING_OPTIONS[f] for f in defaults)
    return f"{line} ({why}; if it was trained with others, pass {flags})"


def _tolerance_warning(tolerance: float, fp16: bool) -> str:
    default = default_tolerance(fp16)
    looser = "looser" if tolerance > default else "stricter" if tolerance < default else "the same"
    return (
        f"niff-export: warning: --parity-tolerance {tolerance:g} replaces the parity gate's default relative "
        f"tolerance {default:g} ({looser}): the artifacts may differ from eager PyTorch by that much; niff.json "
        "records it, with the eager model's float32-vs-float64 drift"
    )


def _summary(result: ExportResult, elapsed: float) -> str:
    manifest = result.manifest
    what = f"{manifest.arch or manifest.builder}, {manifest.num_classes} classes"
    lines = [f"Exported {manifest.name} ({what}) in {elapsed:.1f} s:"]
    for fmt, record in manifest.artifacts.items():
        size_mb = (result.path / record.path).stat().st_size / 1e6
        counts = Counter(layer.lowering for layer in record.spectral_layers or ())
        layers = f" ({', '.join(f'{count} {name}' for name, count in sorted(counts.items()))})" if counts else ""
        lines.append(f"  {result.path / record.path}  {fmt}, {record.lowering} lowering{layers}, {size_mb:.1f} MB")
        lines.append(f"    checked in {' and '.join(record.verified_runtimes)}")
        if record.target == "portable" and not any(r.startswith("openvino ") for r in record.verified_runtimes):
            lines.append(f"    not checked in OpenVINO, which is not installed ({OPENVINO_INSTALL})")
    lines += ["", result.parity.table()]
    if result.compact is not None and result.agreement is not None:
        lines += ["", result.compact.table(), "", result.agreement.table()]
    if len(result.versions) > 1 or result.removed_versions:
        removed = f"; removed: {', '.join(map(str, result.removed_versions))}" if result.removed_versions else ""
        lines += [
            "",
            f"Versions in {result.path}: {', '.join(map(str, result.versions))}{removed} (Triton serves them "
            f"all; niff-serve serves version {manifest.version}, the one niff.json describes)",
        ]
    lines += ["", f"Serve it: niff-serve --model-repository {result.path.parent}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = _ProgressPrinter()
    return run(
        PROG,
        lambda: _export(args, progress),
        interrupted="interrupted; nothing was written",
        before_message=progress.end_line,
    )


def _export(args: argparse.Namespace, progress: _ProgressPrinter) -> int:
    start = time.perf_counter()
    options = record_from_args(ExportOptions, args)
    if options.parity_tolerance is not None:
        print(_tolerance_warning(options.parity_tolerance, options.fp16), file=sys.stderr, flush=True)
    result = export_checkpoint(
        args.checkpoint,
        args.size,
        args.out,
        options,
        name=args.name,
        progress=progress,
        loaded=lambda spec: print(
            _preprocessing_line(spec, args.size, options.preprocessing), file=sys.stderr, flush=True
        ),
        **checkpoint_arguments(args),
    )
    print(_summary(result, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
