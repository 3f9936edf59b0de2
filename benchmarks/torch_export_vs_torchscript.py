"""TorchScript (`model.pt`, torch.jit) against torch.export (`model.pt2`) for the same baked model, on the CPU.

Both artifacts come from one baked model (torch.fft lowering, what the TorchScript artifact holds). Each
measurement runs in a fresh process that has imported torch already: the first load (what a server start
pays, lazy imports included), a second load of the same file, the first call, then throughput at batch 1
and 8. Rounds alternate the two formats; the tables show medians over rounds and the median of the
per-round ratios (pt2 / TorchScript).

    python benchmarks/torch_export_vs_torchscript.py --rounds 5
    python benchmarks/torch_export_vs_torchscript.py --arch resnet18_split --size 64
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import niff
from niff_export import bake, lower
from niff_export.artifacts import write_torchscript

DIGITS = Path(__file__).resolve().parents[1] / "niff" / "assets" / "digits_resnet.pt"
FORMATS = ("torchscript", "pt2")

# Runs in the child: argv = format, path, size, threads, seconds. Prints one JSON line.
_CHILD = """
import json, sys, time, warnings
import torch
warnings.simplefilter("ignore")
fmt, path, size, threads, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
torch.set_num_threads(threads)
load = (lambda: torch.jit.load(path)) if fmt == "torchscript" else (lambda: torch.export.load(path).module())
started = time.perf_counter()
load()
result = {"load_ms": (time.perf_counter() - started) * 1000}
started = time.perf_counter()
module = load()
loaded = time.perf_counter()
result["reload_ms"] = (loaded - started) * 1000
with torch.inference_mode():
    x1, x8 = torch.randn(1, 3, size, size), torch.randn(8, 3, size, size)
    module(x1)
    result["first_call_ms"] = (time.perf_counter() - loaded) * 1000
    for batch, x in ((1, x1), (8, x8)):
        for _ in range(3):
            module(x)
        count, start = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - start < seconds:
            module(x)
            count += 1
        result[f"img_s_b{batch}"] = count * batch / (time.perf_counter() - start)
print(json.dumps(result))
"""


def load(fmt: str, path: Path) -> torch.nn.Module:
    return torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()


def build(arch: str, size: int) -> tuple[str, torch.nn.Module]:
    if arch == "digits":
        model = niff.load_checkpoint(DIGITS)
        return f"digits (NIFF ResNet, {size}²)", model
    torch.manual_seed(0)
    return f"{arch} ({size}², 10 classes, random weights)", niff.create_model(arch, num_classes=10).eval()


def write_artifacts(model: torch.nn.Module, size: int, folder: Path) -> dict[str, dict[str, float]]:
    baked = lower(bake(model, size), "torch").eval()
    example = torch.randn(2, 3, size, size)
    info: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    write_torchscript(baked, folder / "model.pt")
    info["torchscript"] = {"write_s": time.perf_counter() - started}
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(baked, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, folder / "model.pt2")
    info["pt2"] = {"write_s": time.perf_counter() - started}
    with torch.no_grad():
        reference = model(example)
        for fmt, path in (("torchscript", "model.pt"), ("pt2", "model.pt2")):
            out = load(fmt, folder / path)(example)
            info[fmt]["rel_err"] = float((out - reference).norm() / reference.norm())
            info[fmt]["file_mb"] = (folder / path).stat().st_size / 1e6
    return info


def measure(fmt: str, path: Path, size: int, threads: int, seconds: float) -> dict[str, float]:
    command = [sys.executable, "-c", _CHILD, fmt, str(path), str(size), str(threads), str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", help="zoo name or 'digits' (default: digits and resnet18_split)")
    parser.add_argument("--size", type=int, default=64, help="input size for zoo models (digits: its own, 32)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed window per batch size and round")
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    keys = ("load_ms", "reload_ms", "first_call_ms", "img_s_b1", "img_s_b8")
    rows, ratio_rows = [], []
    for arch in args.arch or ["digits", "resnet18_split"]:
        model_size = 32 if arch == "digits" else args.size
        title, model = build(arch, model_size)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            info = write_artifacts(model, model_size, folder)
            paths = {"torchscript": folder / "model.pt", "pt2": folder / "model.pt2"}
            rounds: dict[str, list[dict[str, float]]] = {fmt: [] for fmt in FORMATS}
            for index in range(args.rounds):
                for fmt in FORMATS if index % 2 == 0 else FORMATS[::-1]:
                    rounds[fmt].append(measure(fmt, paths[fmt], model_size, args.threads, args.seconds))
        for fmt in FORMATS:
            medians = [statistics.median(r[k] for r in rounds[fmt]) for k in keys]
            written = [f"{info[fmt]['write_s']:.1f}", f"{info[fmt]['file_mb']:.2f}", f"{info[fmt]['rel_err']:.1e}"]
            rows.append([title, fmt, *written, *(f"{m:.0f}" for m in medians)])
        pairs = list(zip(rounds["pt2"], rounds["torchscript"], strict=True))
        ratio_rows.append([title, *(f"{statistics.median(p[k] / s[k] for p, s in pairs):.2f}×" for k in keys)])
    measured = ["load ms", "reload ms", "first call ms", "img/s b1", "img/s b8"]
    print(markdown(["model", "artifact", "write s", "file MB", "rel. err", *measured], rows))
    print(markdown(["model (pt2 / TorchScript)", *measured], ratio_rows))


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n" + "\n".join("| " + " | ".join(line) + " |" for line in lines)


if __name__ == "__main__":
    main()
