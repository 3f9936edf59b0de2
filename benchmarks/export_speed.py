"""Throughput of one NIFF architecture, measured side by side in one run.

Eager (the reference's computation: MLPs and FFTs on every call), the baked model in PyTorch, the ONNX
artifacts in ONNX Runtime (one per lowering), TorchScript, and, for comparison, the same network with
ordinary spatial convolutions in ONNX Runtime. Optionally also times `niff-export` itself (wall time
and peak memory of the child process). Prints a Markdown table with ratios to eager.

    python benchmarks/export_speed.py --arch resnet50_split --size 224 --batch 8
    python benchmarks/export_speed.py --device cuda --batch 128 --fp16   # on a GPU machine
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from twins import spatial_twin

import niff
from niff_export import bake, export_model, lower


def throughput(run: Callable[[], object], batch: int, seconds: float, min_runs: int = 3) -> float:
    """Images per second: best of three timed windows after a warm-up."""
    run()
    run()
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while count < min_runs or time.perf_counter() - start < seconds / 3:
            run()
            count += 1
        best = max(best, count * batch / (time.perf_counter() - start))
    return best


def onnx_runner(path: Path, x: torch.Tensor, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)


def torch_runner(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            out = module(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return out

    return run


def time_cli_export(arch: str, size: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of `niff-export` (both formats, parity gate) on a fresh checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "ckpt.pt"
        torch.save(niff.create_model(arch).state_dict(), checkpoint)
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "niff_export.cli",
                str(checkpoint),
                "--size",
                str(size),
                "--arch",
                arch,
                "--out",
                tmp,
            ],
            check=True,
            capture_output=True,
        )
        elapsed = time.perf_counter() - start
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50_split", choices=niff.list_models())
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per candidate")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--fp16", action="store_true", help="also time TorchScript in float16 (GPU)")
    parser.add_argument("--time-export", action="store_true", help="also time the niff-export CLI")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = niff.create_model(args.arch).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows: list[tuple[str, float]] = []

    with tempfile.TemporaryDirectory() as tmp:
        baked = bake(model, args.size)
        if device.type == "cpu":
            rows.append(("eager (reference computation)", throughput(torch_runner(model, x), args.batch, args.seconds)))
            rows.append(("baked, PyTorch (torch.fft)", throughput(torch_runner(baked, x), args.batch, args.seconds)))
            for fft in ("matmul", "dft"):
                result = export_model(model, args.size, Path(tmp) / fft, formats=["onnx"], fft=fft)
                run = onnx_runner(result.path / "1" / "model.onnx", x, args.threads)
                rows.append((f"ONNX Runtime CPU, {fft} lowering", throughput(run, args.batch, args.seconds)))
            result = export_model(model, args.size, Path(tmp) / "ts", formats=["torchscript"])
            scripted = torch.jit.load(str(result.path / "1" / "model.pt"))
            rows.append(("TorchScript (torch.fft)", throughput(torch_runner(scripted, x), args.batch, args.seconds)))
            plain = Path(tmp) / "plain.onnx"
            torch.onnx.export(
                spatial_twin(model),
                (x,),
                str(plain),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}},
                opset_version=18,
            )
            rows.append(
                (
                    "spatial-conv twin, ONNX Runtime CPU",
                    throughput(onnx_runner(plain, x, args.threads), args.batch, args.seconds),
                )
            )
        else:
            xg = x.to(device)
            rows.append(
                (
                    "eager (reference computation)",
                    throughput(torch_runner(model.to(device), xg), args.batch, args.seconds),
                )
            )
            for lowering in ("torch", "matmul"):
                scripted = torch.jit.script(lower(copy.deepcopy(baked), lowering)).to(device)
                rows.append(
                    (
                        f"TorchScript CUDA fp32, {lowering}",
                        throughput(torch_runner(scripted, xg), args.batch, args.seconds),
                    )
                )
                if args.fp16:
                    from niff_export.precision import HalfPrecision

                    half = torch.jit.script(HalfPrecision(lower(copy.deepcopy(baked), lowering))).to(device)
                    rows.append(
                        (
                            f"TorchScript CUDA fp16, {lowering}",
                            throughput(torch_runner(half, xg), args.batch, args.seconds),
                        )
                    )
            rows.append(
                (
                    "spatial-conv twin, eager CUDA",
                    throughput(torch_runner(spatial_twin(model).to(device), xg), args.batch, args.seconds),
                )
            )

    eager = rows[0][1]
    print(f"\n{args.arch} at {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, {args.device}")
    cpu = _cpu_name()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print("| candidate | img/s | vs eager |\n|---|---:|---:|")
    for label, rate in rows:
        print(f"| {label} | {rate:.1f} | {rate / eager:.1f}x |")
    if args.time_export:
        seconds, peak = time_cli_export(args.arch, args.size)
        what = f"niff-export {args.arch} --size {args.size} (ONNX + TorchScript, parity gate)"
        print(f"\n{what}: {seconds:.1f} s, peak RSS {peak:.2f} GB")


if __name__ == "__main__":
    main()
