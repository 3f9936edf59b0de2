"""What compacting costs on a real trained model: the embedded digits model exported exactly and with several
compact settings, each ONNX artifact scored on the 450 held-out digits in ONNX Runtime, with its top-1 agreement
with the exact export and the kernel each layer got. Prints a Markdown table.

    python benchmarks/compact_accuracy.py
    python benchmarks/compact_accuracy.py --kernels 3,5,7,9,11,13,15 --masses 0.6,0.8,0.9 --errors 0.3,0.5
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from export_speed import _cpu_name

from niff import digits
from niff_export import export_checkpoint
from niff_export.compact import CompactRequest


def predictions(model_file: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0].argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", default="3,5,7,9,11,13,15")
    parser.add_argument("--masses", default="0.6,0.8,0.9")
    parser.add_argument("--errors", default="0.3,0.5,0.7")
    args = parser.parse_args()
    settings: list[tuple[str, CompactRequest | None]] = [("exact export", None)]
    settings += [
        (f"--compact-kernel {k}", CompactRequest(kernel=int(k), min_agreement=0)) for k in args.kernels.split(",")
    ]
    settings += [(f"--compact {m}", CompactRequest(mass=float(m), min_agreement=0)) for m in args.masses.split(",")]
    settings += [
        (f"--compact-error {e}", CompactRequest(error=float(e), min_agreement=0)) for e in args.errors.split(",")
    ]

    model_inputs = None
    _, _, images, labels = digits.load_split()
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        exact = None
        for index, (label, request) in enumerate(settings):
            result = export_checkpoint(
                digits.DEFAULT_CHECKPOINT, digits.INPUT_SIZE, tmp, name=f"s{index}", formats=["onnx"], compact=request
            )
            if model_inputs is None:
                spec = result.manifest.preprocessing
                model_inputs = digits.to_tensor(images, spec.mean, spec.std).numpy()
            predicted = predictions(result.path / "1" / "model.onnx", model_inputs)
            exact = predicted if exact is None else exact
            layers = result.manifest.compact.layers if result.manifest.compact else ()
            kernels = " ".join(str(c.kernel or "-") for c in layers) or "exact"
            mass = [c.mass_kept for c in layers if c.kernel]
            rows.append(
                (
                    label,
                    kernels,
                    f"{min(mass):.2f}" if mass else "1",
                    f"{(predicted == labels).mean():.2%} ({int((predicted == labels).sum())}/{len(labels)})",
                    f"{(predicted == exact).mean():.2%}",
                )
            )
    print(f"\nembedded digits model (32x32, {len(labels)} held-out digits), ONNX Runtime CPU")
    elapsed = time.perf_counter() - started
    print(f"machine: {_cpu_name()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}, {elapsed:.0f} s")
    print(
        "layers: layer1.0.conv1, layer1.0.conv2 (32x32), layer2.0.conv2 (16x16), layer3.0.conv2 (8x8), "
        "layer4.0.conv2 (4x4); '-' = stays spectral\n"
    )
    print("| setting | kernel per layer | least L1 mass kept | held-out accuracy | agreement with exact |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
