"""Compact export's speed: a NIFF network with its spectral layers compacted to KxK, against the exact export and
the same network with plain spatial convolutions (the "twin"), in ONNX Runtime CPU and, with ``--openvino``,
side by side in OpenVINO CPU (float32), in one run.

Rounds are interleaved (every candidate once per round, in a rotating order) and the result is the median
over rounds of each round's ratio to the ONNX Runtime twin, which a machine shared with other work disturbs
far less than absolute times. Two exact forms of circular padding are timed for each K: ONNX ``Pad`` mode
"wrap" (``niff-export --target onnxruntime``) and torch's own circular padding, Slices and Concats
(``--target portable``, the default, which OpenVINO reads too).

    python benchmarks/compact_speed.py --arch resnet50_split --size 224 --batch 8 --kernels 7 --rounds 15
    python benchmarks/compact_speed.py --arch resnet50_split --size 224 --batch 8 --kernels 7 --openvino
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from export_speed import _cpu_name, onnx_runner
from twins import spatial_twin

import niff
from niff_export import export_model
from niff_export.compact import CircularConv, CompactRequest
from niff_export.lowering import default_layer_lowering, lower_layer
from niff_export.runtimes import runtime_label
from niff_export.spectral import SpectralConv


def export_onnx(model: torch.nn.Module, size: int, folder: Path, kernel: int | None, target: str) -> Path:
    request = None if kernel is None else CompactRequest(kernel=kernel, min_agreement=0.0)
    result = export_model(model, size, folder, "m", formats=["onnx"], compact=request, target=target)
    if result.compact is not None:
        print(result.compact.table(), file=sys.stderr)
    return result.path / "1" / "model.onnx"


def twin_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.onnx.export(
        spatial_twin(model),
        (x,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}},
        opset_version=18,
    )
    return path


def single_layers(folder: Path, batch: int, kernel: int) -> dict[str, tuple[Path, torch.Tensor]]:
    """One depthwise layer per ResNet-50 stage shape (channels, map): spectral (matmul) and compact in both paddings."""
    candidates = {}
    for channels, n in ((64, 56), (128, 28), (256, 14), (512, 8), (512, 7)):
        x = torch.randn(batch, channels, n, n)
        spectral = SpectralConv(torch.randn(channels, n, n // 2 + 1, dtype=torch.complex128), torch.randn(channels))
        exact = lower_layer(spectral, default_layer_lowering(spectral, "matmul"))
        modules = {
            "spectral": exact,
            "wrap": CircularConv.from_spectral(spectral, kernel),
            "slices": CircularConv.from_spectral(spectral, kernel, wrap=False),
        }
        for name, module in modules.items():
            path = folder / f"{name}{channels}_{n}.onnx"
            torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["input"], opset_version=19)
            candidates[f"{channels}x{n}x{n} {name}"] = (path, x)
    return candidates


def openvino_runner(path: Path, x: torch.Tensor, threads: int) -> Callable[[], object]:
    """OpenVINO CPU at float32, the precision niff-export's gate checks (bfloat16 CPUs default to bfloat16)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request, feed = compiled.create_infer_request(), x.numpy()
    return lambda: request.infer(feed)


def interleaved(
    runners: dict[str, Callable[[], object]], rounds: int, repeats: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Per round, each candidate's best of ``repeats`` runs (seconds), candidates in a rotating order."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for run in runners.values():  # warm-up
        run()
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            best = float("inf")
            for _ in range(repeats):
                start = clock()
                runners[name]()
                best = min(best, clock() - start)
            times[name].append(best)
        print(f"round {index + 1}/{rounds}", file=sys.stderr, flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50_split", choices=niff.list_models())
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--kernels", default="7", help="comma-separated K values to compact to (default: 7)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2, help="runs per candidate and round (the best counts)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-slices", action="store_true", help="skip the torch circular-padding variant")
    parser.add_argument(
        "--openvino",
        action="store_true",
        help="also run every candidate OpenVINO reads (all but Pad wrap) in OpenVINO CPU, float32",
    )
    parser.add_argument(
        "--layers",
        action="store_true",
        help="instead of whole models, time single depthwise layers at ResNet-50's stage shapes (first K of --kernels)",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or (with --threads 1, where ONNX Runtime computes on the calling thread) that thread's "
        "CPU time, which time spent waiting for a core on a shared machine does not inflate",
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    if args.layers:
        time_layers(args, clock)
        return
    model = niff.create_model(args.arch).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    kernels = [int(k) for k in args.kernels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {"plain twin (spatial 3x3 convs)": twin_onnx(model, x, folder / "twin.onnx")}
        paths["exact export (matmul lowering)"] = export_onnx(model, args.size, folder / "exact", None, "portable")
        for k in kernels:
            paths[f"compact K={k}, Pad wrap"] = export_onnx(model, args.size, folder / f"wrap{k}", k, "onnxruntime")
            if not args.no_slices:
                slices = export_onnx(model, args.size, folder / f"slices{k}", k, "portable")
                paths[f"compact K={k}, Slice+Concat"] = slices
        runners = {f"{name}, ORT": onnx_runner(path, x, args.threads) for name, path in paths.items()}
        if args.openvino:
            runners |= {
                f"{name}, OpenVINO": openvino_runner(path, x, args.threads)
                for name, path in paths.items()
                if "Pad wrap" not in name  # OpenVINO refuses Pad mode "wrap"
            }
        started = time.perf_counter()
        times = interleaved(runners, args.rounds, args.repeats, clock)
        elapsed = time.perf_counter() - started

    twin = times["plain twin (spatial 3x3 convs), ORT"]
    runtimes = "ONNX Runtime CPU" + (" and OpenVINO CPU (float32)" if args.openvino else "")
    print(f"\n{args.arch} at {args.size}x{args.size}, batch {args.batch}, {runtimes}, {args.threads} threads")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"runtimes: {', '.join(runtime_label(name) for name in ('onnxruntime', 'openvino')[: 1 + args.openvino])}")
    print(f"{args.rounds} interleaved rounds (best of {args.repeats} runs each), {args.clock} clock, {elapsed:.0f} s\n")
    print("| candidate | median ms | img/s | vs ORT twin (median of per-round ratios) | range over rounds |")
    print("|---|---:|---:|---:|---|")
    for name, values in times.items():
        ratios = [t / v for t, v in zip(twin, values, strict=True)]
        median = statistics.median(values)
        print(
            f"| {name} | {median * 1e3:.0f} | {args.batch / median:.1f} | {statistics.median(ratios):.2f}x | "
            f"{min(ratios):.2f}-{max(ratios):.2f}x |"
        )


def time_layers(args: argparse.Namespace, clock: Callable[[], float]) -> None:
    kernel = int(args.kernels.split(",")[0])
    with tempfile.TemporaryDirectory() as tmp:
        candidates = single_layers(Path(tmp), args.batch, kernel)
        runners = {name: onnx_runner(path, x, args.threads) for name, (path, x) in candidates.items()}
        times = interleaved(runners, args.rounds, args.repeats, clock)
    where = f"batch {args.batch}, K={kernel}, ONNX Runtime CPU, {args.threads} threads, {args.clock} clock"
    print(f"\nsingle depthwise layers, {where}, {args.rounds} interleaved rounds")
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}\n")
    print("| layer (channels x map) | spectral ms | compact, Pad wrap ms | compact, Slice+Concat ms ", end="")
    print("| spectral / wrap | slices / wrap |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape in dict.fromkeys(name.split()[0] for name in times):
        spectral, wrap, slices = (times[f"{shape} {kind}"] for kind in ("spectral", "wrap", "slices"))
        speedup = statistics.median(a / b for a, b in zip(spectral, wrap, strict=True))
        padding = statistics.median(a / b for a, b in zip(slices, wrap, strict=True))
        medians = " | ".join(f"{statistics.median(t) * 1e3:.2f}" for t in (spectral, wrap, slices))
        print(f"| {shape} | {medians} | {speedup:.2f}x | {padding:.2f}x |")


if __name__ == "__main__":
    main()
