"""``niff-eval``: accuracy on your own labelled images, for a checkpoint and its exports or for a model folder."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from niff_export.cli_common import add_checkpoint_options, checkpoint_arguments, run
from niff_export.compact import CompactRequest
from niff_export.errors import ExportError
from niff_export.evaluate import Evaluation, evaluate_checkpoint, evaluate_folder

PROG = "niff-eval"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Top-1 and top-5 accuracy on labelled images (torchvision's ImageFolder layout: "
        "DIR/<class name>/<image>, class names = the model's labels), every image through the model "
        "folder's own preprocessing. For a checkpoint: the eager model, its exact export and, with "
        "--compact-kernel/--compact/--compact-error, a compact export side by side. For an exported model "
        "folder: its model.onnx.",
    )
    add_checkpoint_options(
        parser,
        "evaluate",
        checkpoint="model",
        checkpoint_help="a NIFF checkpoint, or an exported model folder (with niff.json)",
        size_required=False,
    )
    parser.add_argument("--images", type=Path, required=True, help="DIR/<class name>/<image>")
    compact = parser.add_argument_group("compact export beside the exact one (checkpoints only; see niff-export)")
    compact.add_argument("--compact", type=float, metavar="MASS", help="kernels keeping this share of the L1 mass")
    compact.add_argument("--compact-error", type=float, metavar="E", help="kernels with spectral error at most E")
    compact.add_argument("--compact-kernel", type=int, metavar="K", help="KxK kernels (a cap with the others)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
    parser.add_argument("--out", type=Path, help="write eval.json and eval.md into this folder")
    return parser


def _compact(args: argparse.Namespace) -> CompactRequest | None:
    if args.compact is None and args.compact_error is None and args.compact_kernel is None:
        return None
    # Measured, not gated: the point is to see what compacting costs on these images.
    return CompactRequest(args.compact, args.compact_error, args.compact_kernel, min_agreement=0.0)


def _progress(done: int, total: int) -> None:
    """A bar redrawn in place on a terminal; elsewhere (a log, a pipe) only the last state."""
    if not sys.stderr.isatty() and done < total:
        return
    width = 30
    filled = width * done // total
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images", end=end, file=sys.stderr, flush=True)


def run_evaluation(args: argparse.Namespace) -> Evaluation:
    if args.batch_size < 1:
        raise ExportError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ExportError(f"--out {args.out} is a file; give a folder for eval.json and eval.md")
    if (args.model / "niff.json").is_file():
        if args.size is not None or _compact(args) is not None:
            raise ExportError("--size and --compact… apply to a checkpoint; a model folder is evaluated as exported")
        return evaluate_folder(args.model, args.images, args.batch_size, _progress)
    if args.model.is_dir():
        raise ExportError(f"{args.model} is a folder without niff.json: give a checkpoint file or a model folder")
    if not args.model.is_file():
        raise ExportError(f"{args.model}: no such checkpoint file or model folder")
    if args.size is None:
        raise ExportError("a checkpoint needs --size (the input side length it is evaluated at)")
    return evaluate_checkpoint(
        args.model,
        args.size,
        args.images,
        compact=_compact(args),
        batch_size=args.batch_size,
        progress=_progress,
        **checkpoint_arguments(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(PROG, lambda: _evaluate(args), status=2)


def _evaluate(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    evaluation = run_evaluation(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "eval.json").write_text(evaluation.to_json(), encoding="utf-8")
        (args.out / "eval.md").write_text(evaluation.markdown(), encoding="utf-8")
    print(evaluation.markdown(), end="")
    written = f"; wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}" if args.out is not None else ""
    print(f"{PROG}: {time.perf_counter() - started:.1f} s{written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
