"""``niff-export``: a checkpoint in, a parity-checked model-repository folder out."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from niff_export.api import DEFAULT_LOWERING, FORMATS, ExportResult, export_checkpoint
from niff_export.errors import ExportError
from niff_export.labels import read_labels
from niff_export.lowering import LOWERINGS

DESCRIPTION = """\
Export a NIFF checkpoint (trained with the paper's code or ours) for deployment.

Every layer's frequency filter is evaluated once at the given input size and baked in; the algebra is
simplified exactly (FFT-1x1-IFFT becomes a 1x1 conv, BatchNorm folds into the preceding layer), the
transforms are lowered to operations runtimes run fast, and ONNX and TorchScript files are written into
OUT/NAME/ as a model-repository folder (Triton/KServe layout, served by niff-serve). Before anything is
written, the artifacts must reproduce the eager model on random inputs and real photos (relative error
<= 1e-4 in float32, 1e-2 with --fp16, same top-1 on the photos); otherwise the export fails.
"""

EPILOG = """\
examples:
  niff-export resnet50_split.pth --size 224
  niff-export ckpt.pt --size 224 --arch convnext_tiny --ema --out ./models
  niff-export ckpt.pt --size 32 --format onnx --fft dft --name cifar_resnet
  niff-export resnet50_split.pth --size 224 --tune    # time each spectral layer's lowerings here
"""


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a side length like 224, got {text!r}")
    height, width = int(match.group(1)), int(match.group(2) or match.group(1))
    if height != width:
        raise argparse.ArgumentTypeError(f"NIFF filters are defined for square inputs only, got {height}x{width}")
    return height


def _formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        shown = ", ".join(unknown) if unknown else repr(text)
        raise argparse.ArgumentTypeError(f"unknown format {shown}; choose from {', '.join(FORMATS)}")
    return formats


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    import niff

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
        help="time each spectral layer's candidate lowerings (matmul: separable, kronecker; TorchScript also "
        "torch.fft) on this machine's runtime at batch 8 (or --max-batch-size if smaller) and keep the fastest; "
        "without it a default table measured on ONNX Runtime CPU applies. Choices and timings go into niff.json",
    )
    parser.add_argument("--fp16", action="store_true", help="compute in float16 (inputs and outputs stay float32)")
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class names, one per line (default: ImageNet names for 1000 classes, else numbers)",
    )
    parser.add_argument("--opset", type=_positive, metavar="N", help="ONNX opset (default: 18 for matmul, 20 for dft)")
    parser.add_argument(
        "--max-batch-size", type=_positive, default=64, metavar="N", help="largest batch servers may form (default: 64)"
    )
    parser.add_argument(
        "--model-version", type=_positive, default=1, metavar="N", help="version recorded in niff.json (default: 1)"
    )
    parser.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a checkpoint holding pickled Python objects (a whole nn.Module); loading one can run code",
    )
    return parser


class _ProgressPrinter:
    """Numbered stage lines on stderr: '[2/5] Baking filters at 224x224 … 3.1 s'."""

    def __init__(self, total: int) -> None:
        self.total, self.index = total, 0

    def __call__(self, message: str, seconds: float | None) -> None:
        if seconds is None:
            self.index += 1
            print(f"[{self.index}/{self.total}] {message} …", end="", file=sys.stderr, flush=True)
        else:
            print(f" {seconds:.1f} s", file=sys.stderr, flush=True)


def _summary(result: ExportResult, elapsed: float) -> str:
    meta = result.metadata
    what = f"{meta['arch'] or meta['builder']}, {meta['num_classes']} classes"
    lines = [f"Exported {meta['name']} ({what}) in {elapsed:.1f} s:"]
    for fmt, info in meta["artifacts"].items():
        size_mb = (result.path / info["path"]).stat().st_size / 1e6
        counts = Counter(layer["lowering"] for layer in info["spectral_layers"])
        layers = f" ({', '.join(f'{count} {name}' for name, count in sorted(counts.items()))})" if counts else ""
        lines.append(f"  {result.path / info['path']}  {fmt}, {info['lowering']} lowering{layers}, {size_mb:.1f} MB")
    lines += ["", result.parity.table(), "", f"Serve it: niff-serve --model-repository {result.path.parent}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = _ProgressPrinter(total=3 + len(args.formats) * (2 if args.tune else 1))
    start = time.perf_counter()
    try:
        labels = read_labels(args.labels) if args.labels else None
        result = export_checkpoint(
            args.checkpoint,
            args.size,
            args.out,
            arch=args.arch,
            num_classes=args.num_classes,
            trust_pickle=args.trust_pickle,
            ema=args.ema,
            name=args.name,
            progress=progress,
            formats=args.formats,
            fft=args.fft,
            fp16=args.fp16,
            labels=labels,
            opset=args.opset,
            max_batch_size=args.max_batch_size,
            version=args.model_version,
            tune=args.tune,
        )
    except ExportError as exc:
        print(f"\nniff-export: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"\nniff-export: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nniff-export: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(_summary(result, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
