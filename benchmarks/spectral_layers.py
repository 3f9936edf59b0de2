"""Baked spectral layers and whole NIFF models against the convolutions they replace, measured in one run.

Part 1, one layer: every per-layer lowering of a depthwise spectral layer at the maps of a 224² ResNet
(56²×64, 28²×128, 14²×256, 7²×512) against a dense 3×3 convolution of the same shape, a 7×7
depthwise convolution with circular padding and a 1×1 convolution.
Part 2, whole models: resnet18_split and resnet50_split exported the way niff-export does it (default
table; with --tune also the --tune export, in the same rounds) against the plain ResNets (torchvision's
structure, built with torch.nn), and convnext_tiny against ConvNeXt-T with its 7×7 depthwise convolutions.

Candidates run in interleaved rounds; each round times every candidate --runs times and keeps the
median, and each table cell is the median over rounds (times, and per-round ratios to the group's
reference), so a background load that comes and goes moves all candidates alike. On a machine shared
with other work, --clock cpu times the process's CPU time instead of the wall clock (ONNX Runtime's
idle threads sleep rather than spin here, so CPU time is work done; it does not see how well an
operation spreads over the threads). Random weights: the speed of a layer does not depend on its values.

    python benchmarks/spectral_layers.py                  # ONNX Runtime CPU, 2 threads, batch 8
    python benchmarks/spectral_layers.py --device cuda    # TorchScript CUDA fp32 + fp16, batch 128
                                                          # (and ONNX Runtime's CUDA provider if installed)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from export_speed import _cpu_name as cpu_name
from torch import nn
from twins import spatial_twin

import niff
from niff_export import bake, lower
from niff_export.artifacts import write_onnx
from niff_export.lowering import lower_layer
from niff_export.precision import HalfPrecision
from niff_export.spectral import SpectralConv, half_spectrum
from niff_export.tuning import candidates, default_choices, tune_layers

LAYER_SHAPES = ((56, 64), (28, 128), (14, 256), (7, 512))
MODELS = (("resnet18_split", 3), ("resnet50_split", 3), ("convnext_tiny", 7))  # (arch, twin's depthwise kernel)

Runner = Callable[[], object]


def interleaved(
    runners: dict[str, Runner], reference: str, rounds: int, runs: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, tuple[float, float]]:
    """Per candidate: median time (ms) over rounds and median over rounds of its time / the reference's."""
    for run in runners.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples = []
            for _ in range(runs):
                start = clock()
                run()
                samples.append(clock() - start)
            times[name].append(statistics.median(samples) * 1e3)
    return {
        name: (
            statistics.median(values),
            statistics.median(a / b for a, b in zip(values, times[reference], strict=True)),
        )
        for name, values in times.items()
    }


def onnx_runner(module: nn.Module, x: torch.Tensor, path: Path, threads: int, cuda: bool) -> Runner:
    import onnxruntime as ort

    write_onnx(module.eval(), x[:2], path, "matmul", None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)


def torchscript_runner(module: nn.Module, x: torch.Tensor, fp16: bool) -> Runner:
    scripted = torch.jit.script(HalfPrecision(module) if fp16 else module.eval()).to(x.device)

    def run() -> object:
        with torch.no_grad():
            out = scripted(x)
        torch.cuda.synchronize()
        return out

    return run


class CircularDepthwise(nn.Module):
    """A k×k depthwise convolution with circular padding: the cheapest spatial layer of a spectral layer's reach."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels, bias=False)
        self.conv.padding_mode = "circular"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def spectral_layer(channels: int, size: int) -> SpectralConv:
    generator = torch.Generator().manual_seed(size)
    parts = (torch.randn(channels, size, size, generator=generator, dtype=torch.float64) for _ in range(2))
    return SpectralConv(half_spectrum(torch.complex(*parts)))


def layer_modules(channels: int, size: int, onnx: bool) -> dict[str, nn.Module]:
    layer = spectral_layer(channels, size)
    modules: dict[str, nn.Module] = {"dense 3x3": nn.Conv2d(channels, channels, 3, padding=1, bias=False)}
    for name in candidates("onnx" if onnx else "torchscript", "matmul", size):
        modules[f"spectral, {name}"] = nn.Sequential(lower_layer(layer, name))
    modules["depthwise 7x7 circular"] = CircularDepthwise(channels, 7)
    modules["1x1"] = nn.Conv2d(channels, channels, 1, bias=False)
    return modules


def exported_model(arch: str, size: int, tune: bool, batch: int) -> tuple[nn.Module, nn.Module, str]:
    """The model lowered as niff-export lowers it for ONNX, its eager form, and a summary of the layer choices."""
    torch.manual_seed(0)
    model = niff.create_model(arch).eval()
    baked = bake(model, size)
    choices = tune_layers(baked, "onnx", "matmul", batch=batch) if tune else default_choices(baked, "matmul")
    lowered = lower(copy.deepcopy(baked), "matmul", {choice.layer: choice.lowering for choice in choices})
    counts: dict[str, int] = {}
    for choice in choices:
        counts[choice.lowering] = counts.get(choice.lowering, 0) + 1
    return lowered, model, ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def layer_part(args: argparse.Namespace, tmp: Path) -> None:
    precisions = ("fp32", "fp16") if args.device == "cuda" else ("fp32",)
    for precision in precisions:
        results = {}
        for size, channels in LAYER_SHAPES:
            x = torch.randn(args.layer_batch, channels, size, size)
            runners = {}
            for name, module in layer_modules(channels, size, onnx=args.device == "cpu").items():
                if args.device == "cuda":
                    runners[name] = torchscript_runner(module, x.cuda(), precision == "fp16")
                else:
                    path = tmp / f"{name.replace(' ', '_').replace(',', '')}_{size}.onnx"
                    runners[name] = onnx_runner(module, x, path, args.threads, cuda=False)
            results[f"{size}², {channels}"] = interleaved(runners, "dense 3x3", args.rounds, args.runs, args.clock)
        names = list(max(results.values(), key=len))
        rows = [
            [shape] + [f"{result[n][0]:.2f} ms ({result[n][1]:.2f}×)" if n in result else "—" for n in names]
            for shape, result in results.items()
        ]
        cpu = f"ONNX Runtime CPU, {args.threads} threads"
        runtime = f"TorchScript CUDA {precision}" if args.device == "cuda" else cpu
        title = f"One layer, batch {args.layer_batch}, {runtime} (time, and ratio to the dense 3x3):"
        print_table(title, ["map², channels", *names], rows)


def model_part(args: argparse.Namespace, tmp: Path) -> None:
    gpu_ort = False
    if args.device == "cuda":
        with contextlib.suppress(ImportError):
            import onnxruntime as ort

            gpu_ort = "CUDAExecutionProvider" in ort.get_available_providers()
    rows = []
    for arch, kernel in MODELS:
        if args.models and arch not in args.models:
            continue
        exports = {"default table": exported_model(arch, args.size, False, args.batch)}
        if args.tune:
            exports["--tune"] = exported_model(arch, args.size, True, args.batch)
        model = exports["default table"][1]
        twin = spatial_twin(model, kernel)
        x = torch.randn(args.batch, 3, args.size, args.size)
        with torch.no_grad():
            reference = model(x[:2])
            errors = {
                name: float((lowered(x[:2]) - reference).norm() / reference.norm())
                for name, (lowered, _, _) in exports.items()
            }
        groups: dict[str, dict[str, Runner]] = {}
        if args.device == "cpu" or gpu_ort:
            runtime = "ONNX Runtime " + ("CUDA" if args.device == "cuda" else f"CPU, {args.threads} threads")
            cuda = args.device == "cuda"
            groups[runtime] = {"twin": onnx_runner(twin, x, tmp / f"{arch}_twin.onnx", args.threads, cuda)}
            for i, (name, (lowered, _, _)) in enumerate(exports.items()):
                groups[runtime][name] = onnx_runner(lowered, x, tmp / f"{arch}_niff{i}.onnx", args.threads, cuda)
        if args.device == "cuda":
            xg = x.cuda()
            for precision in ("fp32", "fp16"):
                group = {"twin": torchscript_runner(copy.deepcopy(twin).cuda(), xg, precision == "fp16")}
                for name, (lowered, _, _) in exports.items():
                    group[name] = torchscript_runner(copy.deepcopy(lowered).cuda(), xg, precision == "fp16")
                groups[f"TorchScript CUDA {precision}"] = group
        for runtime, runners in groups.items():
            result = interleaved(runners, "twin", args.rounds, args.runs, args.clock)
            for name, (_, _, summary) in exports.items():
                (niff_ms, ratio), twin_ms = result[name], result["twin"][0]
                rows.append(
                    [
                        arch,
                        runtime,
                        name,
                        summary,
                        f"{errors[name]:.1e}",
                        f"{niff_ms:.1f}",
                        f"{twin_ms:.1f}",
                        f"**{1 / ratio:.3f}×**",
                    ]
                )
    header = ["model", "runtime", "lowerings by", "spectral layers", "rel. err", "NIFF ms", "twin ms", "speed vs twin"]
    title = f"Whole models, {args.size}², batch {args.batch} (speed vs twin: 1 / median of per-round NIFF/twin time):"
    print_table(title, header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, help="whole-model batch (default: 8 on CPU, 128 on CUDA)")
    parser.add_argument("--layer-batch", type=int, help="single-layer batch (default: as --batch)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per candidate and round (default 3)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="wall clock (default) or process CPU time"
    )
    parser.add_argument(
        "--tune", action="store_true", help="whole models: also the export with lowerings by --tune, in the same rounds"
    )
    parser.add_argument("--models", nargs="*", metavar="ARCH", help="whole models to run (default: all three)")
    parser.add_argument("--skip-layers", action="store_true", help="only the whole models")
    parser.add_argument("--skip-models", action="store_true", help="only the single layers")
    args = parser.parse_args()
    args.batch = args.batch or (128 if args.device == "cuda" else 8)
    args.layer_batch = args.layer_batch or args.batch
    if args.device == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures CPU work; GPU runs need the wall clock")
    args.clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPUs"
    clock = "process CPU time" if args.clock is time.process_time else "wall clock"
    print(f"machine: {cpu_name()}, {device}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}; {clock}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_layers:
            layer_part(args, Path(tmp))
        if not args.skip_models:
            model_part(args, Path(tmp))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
