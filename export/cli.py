"""``niff-export``: a checkpoint in, a parity-checked model-repository folder out."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from torch import nn

import niff
from niff_contract import INTERPOLATIONS
from niff_export.api import (
    DEFAULT_LOWERING,
    FORMATS,
    ExportOptions,
    ExportResult,
    check_size,
    export_model,
    installed_versions,
    load_model,
    planned_preprocessing,
)
from niff_export.compact import CompactRequest
from niff_export.errors import ExportError
from niff_export.labels import read_labels
from niff_export.lowering import LOWERINGS
from niff_export.parity import check_tolerance, default_tolerance
from niff_export.runtimes import OPENVINO_INSTALL, TARGETS

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


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(-?\d+)\s*(?:[xX×]\s*(-?\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a side length like 224, got {text!r}")
    height, width = int(match.group(1)), int(match.group(2) or match.group(1))
    if height != width:
        raise argparse.ArgumentTypeError(f"NIFF filters are defined for square inputs only, got {height}x{width}")
    try:
        return check_size(height)
    except ExportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        shown = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown format {shown}; choose from {', '.join(FORMATS)}")
    return formats


def _tolerance(text: str) -> float:
    try:
        value = float(text)
        check_tolerance(value)
    except (ValueError, ExportError):
        raise argparse.ArgumentTypeError(
            f"expected a relative error between 0 and 1, like 1e-3, got {text!r}"
        ) from None
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers R,G,B, got {text!r}")
    return values  # type: ignore[return-value]


def _version() -> str:
    versions = installed_versions()
    using = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "niff")
    return f"niff-export {versions.get('niff', '0+unknown')} ({using})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="niff-export",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint", type=Path, help="checkpoint file: a state_dict or a training checkpoint (.pt/.pth)"
    )
    parser.add_argument("--size", type=_size, required=True, help="input side length in pixels, e.g. 224 (square)")
    parser.add_argument(
        "--arch",
        metavar="NAME",
        help="zoo architecture (default: read from the checkpoint's keys); one of: " + ", ".join(niff.list_models()),
    )
    parser.add_argument("--num-classes", type=_positive, metavar="N", help="class count (default: read from the head)")
    parser.add_argument("--name", help="model name, the folder and URL name (default: the architecture's name)")
    parser.add_argument(
        "--out", type=Path, default=Path("models"), help="model repository to write into (default: ./models)"
    )
    parser.add_argument(
        "--format",
        dest="formats",
        type=_formats,
        default=list(FORMATS),
        metavar="LIST",
        help="comma-separated artifacts to write: onnx, torchscript (default: both)",
    )
    parser.add_argument(
        "--fft",
        choices=LOWERINGS,
        help="how transforms are computed: matmul = DFT as products with precomputed matrices (runs on every "
        "runtime and execution provider); dft = ONNX DFT op (opset >= 20); torch = torch.fft in TorchScript "
        f"(cuFFT on GPU). Default: ONNX {DEFAULT_LOWERING['onnx']}, TorchScript {DEFAULT_LOWERING['torchscript']}",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="time each spectral layer's candidate lowerings (matmul: separable, paired, kronecker up to 16x16 "
        "maps, and in ONNX separable-per-image and paired-per-image; TorchScript also torch.fft) on this "
        "machine's runtime at batch 8 (or --max-batch-size if smaller) and keep the fastest; "
        "without it a default table measured on ONNX Runtime CPU applies. Choices and timings go into niff.json",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also write niff-report's kernel report (report.json, figures, report.md) into the model folder's "
        "report/, listed in niff.json; niff-serve's page shows it (needs the report extra: matplotlib)",
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        help="where the ONNX file will run. portable: forms every supported runtime reads (ONNX Runtime, "
        "OpenVINO), checked in each one installed; onnxruntime: ONNX Runtime's fastest forms (a compact "
        "export's circular padding as one Pad mode 'wrap', which OpenVINO refuses), checked there alone; "
        "openvino: portable, and fail unless OpenVINO is installed to check the file. Default: portable "
        "(onnxruntime with --fft dft, whose DFT ops OpenVINO misreads). Only compact exports' files differ; "
        "niff.json records the target and the runtimes (with versions) that ran the file",
    )
    parser.add_argument("--fp16", action="store_true", help="compute in float16 (inputs and outputs stay float32)")
    parser.add_argument(
        "--parity-tolerance",
        type=_tolerance,
        metavar="T",
        help="relative error the parity gate accepts, for an ill-conditioned model whose own float32 output drifts "
        "from float64 (default: 1e-4, with --fp16 1e-2); printed as a warning and recorded in niff.json with the "
        "measured drift. A failing gate says when this applies",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class names, one per line (default: ImageNet names for 1000 classes, else numbers)",
    )
    parser.add_argument("--opset", type=_positive, metavar="N", help="ONNX opset (default: 18 for matmul, 20 for dft)")
    parser.add_argument(
        "--max-batch-size",
        type=_positive,
        default=16,
        metavar="N",
        help="largest batch niff-serve forms (config.pbtxt; default: 16; a server setting may override it)",
    )
    parser.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="longest wait for a fuller batch (config.pbtxt's max_queue_delay; default: 5)",
    )
    preprocessing = parser.add_argument_group(
        "preprocessing",
        "How the model was trained to be evaluated (timm's names). Each overrides the architecture's default\n"
        "and the checkpoint's own metadata, is recorded in niff.json and followed by niff-serve.",
    )
    preprocessing.add_argument(
        "--interpolation", choices=INTERPOLATIONS, help="resize filter for the shorter side (e.g. bicubic)"
    )
    preprocessing.add_argument(
        "--crop-pct",
        type=float,
        metavar="F",
        help="center-crop fraction: resize to floor(size / F), then crop (0 < F <= 1)",
    )
    preprocessing.add_argument("--mean", type=_triple, metavar="R,G,B", help="per-channel mean on the [0, 1] scale")
    preprocessing.add_argument("--std", type=_triple, metavar="R,G,B", help="per-channel std on the [0, 1] scale")
    parser.add_argument(
        "--model-version",
        type=_positive,
        default=1,
        metavar="N",
        help="model version: the files go into OUT/NAME/N/, as Triton lays out versions (default: 1). The "
        "folder's other versions are kept and config.pbtxt lists them all; niff.json describes version N, the "
        "one niff-serve serves",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace version N when OUT/NAME/N/ exists (without it, that is an error and nothing is written)",
    )
    parser.add_argument(
        "--keep-versions",
        type=_positive,
        metavar="K",
        help="keep only the K highest versions in OUT/NAME/ (N among them; older version folders are deleted "
        "once the export succeeds) and write version_policy latest { num_versions: K } into config.pbtxt "
        "(default: keep every version and list each one)",
    )
    parser.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    compact = parser.add_argument_group("compact export (approximate, opt-in)")
    compact.add_argument(
        "--compact",
        type=float,
        metavar="MASS",
        help="compact every spectral layer whose kernels keep MASS (0 < MASS <= 1) of their L1 mass inside some "
        "odd KxK window, with the smallest such K",
    )
    compact.add_argument(
        "--compact-error",
        type=float,
        metavar="E",
        help="instead of --compact: per layer the smallest K whose relative spectral error is <= E",
    )
    compact.add_argument(
        "--compact-kernel",
        type=int,
        metavar="K",
        help="odd window side: alone, every layer gets KxK; with --compact/--compact-error, K caps their choice",
    )
    compact.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="your images from the model's domain, which then decide the gate (the built-in photos are only "
        "reported): as DIR/<class name>/<image> (class names = the model's labels) the gate is the top-1 "
        "accuracy drop (--compact-max-accuracy-drop); a flat folder of images gates on agreement "
        "(--compact-min-agreement)",
    )
    compact.add_argument(
        "--compact-min-agreement",
        type=float,
        metavar="A",
        help="least top-1 agreement (0..1) of the compact model with the exact one on a flat --calibration "
        "folder, or without --calibration on the built-in photos (default: 1.0; 0 accepts anything)",
    )
    compact.add_argument(
        "--compact-max-accuracy-drop",
        type=float,
        metavar="D",
        help="with labelled --calibration images: the largest share by which the compact model's top-1 accuracy "
        "may fall below the exact model's (default: 0, nothing lost; 0.005 = half a point)",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a checkpoint holding pickled Python objects (a whole nn.Module); loading one can run code",
    )
    parser.add_argument("--version", action="version", version=_version())
    return parser


# Advice for a checkpoint problem (``niff.CheckpointError.option``), in this command's option names.
_ADVICE = {
    "arch": "pass --arch NAME (niff-export --help lists the names)",
    "trust_pickle": "loading them can run code; if you trust the file, pass --trust-pickle",
    "ema": "leave out --ema for its model weights",
}


def _error_message(exc: ExportError) -> str:
    cause = exc.__cause__
    if isinstance(cause, niff.CheckpointError) and cause.option in _ADVICE:
        return f"{cause.problem}; {_ADVICE[cause.option]}"
    return str(exc)


class _ProgressPrinter:
    """Numbered stage lines on stderr: '[2/5] Baking filters at 224x224 … 3.1 s'."""

    def __init__(self, total: int) -> None:
        self.total, self.index = total, 0
        self.in_line = False  # a stage's line is waiting for its time

    def __call__(self, message: str, seconds: float | None) -> None:
        if seconds is None:
            self.index += 1
            print(f"[{self.index}/{self.total}] {message} …", end="", file=sys.stderr, flush=True)
        else:
            print(f" {seconds:.1f} s", file=sys.stderr, flush=True)
        self.in_line = seconds is None

    def end_line(self) -> None:
        """Before a message of its own: end a stage line left open (by an error)."""
        if self.in_line:
            print(file=sys.stderr)
            self.in_line = False


# The preprocessing fields a checkpoint's metadata or an option sets (input_size is --size; resize follows).
_PREPROCESSING_OPTIONS = {
    "crop_pct": "--crop-pct",
    "interpolation": "--interpolation",
    "mean": "--mean",
    "std": "--std",
}


def _preprocessing_line(model: nn.Module, size: int, overrides: dict[str, object]) -> str:
    """The preprocessing the export records, and where each part comes from: the options, the checkpoint's
    metadata, or else the architecture's defaults (then said, since a model trained otherwise would be
    served wrong)."""
    used = planned_preprocessing(model, size, overrides)
    spec = model.niff_spec
    from_checkpoint = set(spec.preprocessing_from_checkpoint)
    numbers = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
    line = (
        f"Preprocessing: input {used.input_size}x{used.input_size}, resize {used.resize}, crop_pct {used.crop_pct:g}, "
        f"{used.interpolation} interpolation, mean {numbers(used.mean)}, std {numbers(used.std)}"
    )
    defaults = [f for f in _PREPROCESSING_OPTIONS if f not in overrides and f not in from_checkpoint]
    if not defaults:
        sources = [name for name, given in (("the checkpoint", from_checkpoint), ("the options", overrides)) if given]
        return f"{line} (from {' and '.join(sources)})"
    one = len(defaults) == 1
    imagenet = niff.Preprocessing()
    if all(getattr(used, f) == getattr(imagenet, f) for f in defaults):
        kind = "the ImageNet default" if one else "ImageNet defaults"
    else:
        kind = f"the default{'' if one else 's'} of {spec.arch or spec.builder}"
    if len(defaults) < len(_PREPROCESSING_OPTIONS):
        kind = f"{', '.join(defaults)} {'is' if one else 'are'} {kind}"
    if from_checkpoint & set(_PREPROCESSING_OPTIONS):
        why = f"{kind}: the checkpoint's preprocessing metadata does not set {'it' if one else 'them'}"
    else:
        why = f"{kind}: the checkpoint has no preprocessing metadata"
    flags = ", ".join(_PREPROCESSING_OPTIONS[f] for f in defaults)
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


def _compact_request(args: argparse.Namespace) -> CompactRequest | None:
    """The compact options as a request (validated there), or None for the exact export."""
    given = (
        args.compact,
        args.compact_error,
        args.compact_kernel,
        args.calibration,
        args.compact_min_agreement,
        args.compact_max_accuracy_drop,
    )
    if all(value is None for value in given):
        return None
    return CompactRequest(
        args.compact,
        args.compact_error,
        args.compact_kernel,
        1.0 if args.compact_min_agreement is None else args.compact_min_agreement,
        args.calibration,
        args.compact_max_accuracy_drop or 0.0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    progress = _ProgressPrinter(total=0)
    try:
        compact = _compact_request(args)
        progress.total = 3 + len(args.formats) * (2 if args.tune else 1) + (compact is not None) + args.report
        options = ExportOptions(
            formats=args.formats,
            fft=args.fft,
            fp16=args.fp16,
            labels=read_labels(args.labels) if args.labels else None,
            opset=args.opset,
            max_batch_size=args.max_batch_size,
            max_batch_delay_ms=args.max_batch_delay_ms,
            preprocessing={
                field: getattr(args, field)
                for field in ("interpolation", "crop_pct", "mean", "std")
                if getattr(args, field) is not None
            },
            version=args.model_version,
            force=args.force,
            keep_versions=args.keep_versions,
            compact=compact,
            tune=args.tune,
            report=args.report,
            parity_tolerance=args.parity_tolerance,
            target=args.target,
        )
        if args.parity_tolerance is not None:
            print(_tolerance_warning(args.parity_tolerance, args.fp16), file=sys.stderr, flush=True)
        # export_checkpoint's two steps, to say which preprocessing the export assumes before it starts.
        progress("Loading checkpoint", None)
        loading = time.perf_counter()
        model = load_model(
            args.checkpoint, arch=args.arch, num_classes=args.num_classes, trust_pickle=args.trust_pickle, ema=args.ema
        )
        progress("Loading checkpoint", time.perf_counter() - loading)
        print(_preprocessing_line(model, args.size, options.preprocessing), file=sys.stderr, flush=True)
        name = args.name or (None if model.niff_spec.arch else args.checkpoint.stem)
        result = export_model(model, args.size, args.out, name, options, checkpoint=args.checkpoint, progress=progress)
    except ExportError as exc:
        progress.end_line()
        print(f"niff-export: error: {_error_message(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        progress.end_line()
        print(f"niff-export: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.end_line()
        print("niff-export: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(_summary(result, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
