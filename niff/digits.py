"""Train the embedded default model: a small NIFF ResNet on scikit-learn's bundled handwritten digits.

Run ``OMP_WAIT_POLICY=PASSIVE python -m niff.digits --examples examples/digits`` to rebuild
``niff/assets/digits_resnet.pt`` and the example PNGs (CPU, two threads, about two minutes on two idle cores).
The environment variable matters on a shared CPU: OpenMP's default spin-waiting makes two threads 5-10x
slower when other processes hold the cores; it changes no result (the weights are bit-identical).

The dataset is built exactly the way a served PNG arrives, so training and serving see the same pixels:
each 8×8 digit (values 0..16) becomes black ink on white paper in 8-bit grayscale, is upsampled once to
32×32 with Pillow, and is stored as RGB uint8. The service's resize is then a no-op and the only
transform left is ``/255`` and the normalization recorded in the checkpoint.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from torch.nn import functional as F

from niff.checkpoint import METADATA_KEY, load_checkpoint
from niff.registry import create_model

ARCH = "resnet18_split"
ARCH_KWARGS: dict[str, object] = {"small_input": True, "widths": (16, 32, 64, 128), "layers": (1, 1, 1, 1)}
LABELS: tuple[str, ...] = tuple(str(digit) for digit in range(10))
INPUT_SIZE = 32
RESAMPLE = Image.Resampling.BILINEAR
# The held-out split: a stratified 75/25 split of load_digits() with a fixed seed.
TEST_SIZE = 0.25
SPLIT_SEED = 0
HELD_OUT_SIZE = 450
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "digits_resnet.pt"
# What the shipped checkpoint scores on the held-out split, for the README; a test keeps it true.
SHIPPED_HELD_OUT_CORRECT = 446
SHIPPED_HELD_OUT_ACCURACY = SHIPPED_HELD_OUT_CORRECT / HELD_OUT_SIZE


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: the checkpoint and its held-out score."""

    path: Path
    correct: int
    total: int
    seconds: float
    parameters: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def render(digits: np.ndarray) -> np.ndarray:
    """8×8 digit values (0..16) → [N, 32, 32, 3] uint8 RGB, black ink on white paper, as a served PNG holds."""
    gray = (255 - np.rint(np.asarray(digits, dtype=np.float64).reshape(-1, 8, 8) * 255 / 16)).astype(np.uint8)
    upsampled = [
        np.asarray(Image.fromarray(image, "L").resize((INPUT_SIZE, INPUT_SIZE), RESAMPLE).convert("RGB"))
        for image in gray
    ]
    return np.stack(upsampled)


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``load_digits()`` of the train and held-out images; fixed so every report cites one split."""
    labels = load_digits().target
    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    return train, test


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels): images [N, 32, 32, 3] uint8, labels int64."""
    digits = load_digits()
    images, labels = render(digits.images), digits.target.astype(np.int64)
    train, test = split_indices()
    return images[train], labels[train], images[test], labels[test]


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and std of uint8 images scaled to [0,1], pooled over channels (they are gray, so equal)."""
    values = np.asarray(images, dtype=np.float64) / 255
    mean, std = float(values.mean()), float(values.std())
    return [mean] * 3, [std] * 3


def to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[N, H, W, 3] uint8 → normalized float [N, 3, H, W], the service's transform after its (no-op) resize."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255
    return normalize(x, mean, std)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """[N, 3, H, W] values in [0,1] → normalized with per-channel mean and std."""
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Small random rotations, scalings and shifts of [N, 3, 32, 32] images in [0,1], re-quantized to 8 bits.

    The ink is warped rather than the page, so what moves in from outside the frame is white paper; the
    result is rounded to 1/255 steps because served images are uint8 too.
    """
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=generator) * 2 - 1) * 0.08
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 / INPUT_SIZE)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    ink = F.grid_sample(1 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.round((1 - ink).clamp(0, 1) * 255) / 255


def build_model() -> nn.Module:
    """The untrained digits network: a narrow NIFF ResNet with a 3x3 stride-1 stem for 32×32 inputs."""
    return create_model(ARCH, num_classes=len(LABELS), **ARCH_KWARGS)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 150) -> Tensor:
    """Class indices for normalized inputs ``x``, in eval mode and in chunks to bound memory."""
    model.eval()
    return torch.cat([model(chunk).argmax(1) for chunk in x.split(batch_size)])


def count_correct(model: nn.Module, x: Tensor, labels: Tensor) -> int:
    """How many of the normalized inputs ``x`` the model classifies as ``labels``."""
    return int((predict(model, x) == labels).sum())


def held_out_accuracy(path: str | Path = DEFAULT_CHECKPOINT) -> float:
    """Held-out accuracy of a checkpoint, preprocessed with the mean and std recorded in it."""
    model = load_checkpoint(path)
    _, _, test_images, test_labels = load_split()
    spec = model.niff_spec.preprocessing
    x = to_tensor(test_images, spec.mean, spec.std)
    return count_correct(model, x, torch.from_numpy(test_labels)) / len(test_labels)


def metadata(mean: Sequence[float], std: Sequence[float]) -> dict[str, object]:
    """The checkpoint's ``"niff"`` entry: how to preprocess a served image, and the class names."""
    return {
        "preprocessing": {
            "input_size": INPUT_SIZE,
            "crop_pct": 1.0,
            "mean": list(mean),
            "std": list(std),
            "interpolation": "bilinear",
        },
        "labels": list(LABELS),
    }


def train(
    out: str | Path = DEFAULT_CHECKPOINT,
    epochs: int = 20,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    max_steps: int | None = None,
) -> TrainResult:
    """Train on the train split, save the checkpoint with its metadata, and score it on the held-out split.

    ``max_steps`` stops early (for smoke tests); the cosine schedule still spans ``epochs`` full epochs.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels, test_images, test_labels = load_split()
    mean, std = channel_stats(train_images)
    x_train = torch.from_numpy(train_images).permute(0, 3, 1, 2).float() / 255
    y_train = torch.from_numpy(train_labels)

    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    scheduled = epochs * math.ceil(len(x_train) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=scheduled, pct_start=0.15, anneal_strategy="cos"
    )
    total_steps = scheduled if max_steps is None else min(max_steps, scheduled)
    step = 0
    for epoch in range(epochs):
        if step >= total_steps:
            break
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum, seen = 0.0, 0
        for batch in order.split(batch_size)[: total_steps - step]:
            inputs = normalize(augment(x_train[batch], generator), mean, std)
            loss = F.cross_entropy(model(inputs), y_train[batch], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(batch)
            seen += len(batch)
            step += 1
        elapsed = time.perf_counter() - start
        print(f"epoch {epoch + 1}/{epochs}  loss {loss_sum / seen:.4f}  {elapsed:.0f}s", flush=True)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.save({"model": model.state_dict(), METADATA_KEY: metadata(mean, std)}, out)
    correct = count_correct(model, to_tensor(test_images, mean, std), torch.from_numpy(test_labels))
    parameters = sum(p.numel() for p in model.parameters())
    return TrainResult(out, correct, len(test_labels), time.perf_counter() - start, parameters)


def write_examples(directory: str | Path, checkpoint: str | Path = DEFAULT_CHECKPOINT) -> list[Path]:
    """One PNG per class: the first held-out image of that class the checkpoint gets right, plus a README.

    The PNGs are the exact uint8 arrays of the held-out split, so the service sees the training pixels.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint)
    spec = model.niff_spec.preprocessing
    _, _, test_images, test_labels = load_split()
    _, test_indices = split_indices()
    predictions = predict(model, to_tensor(test_images, spec.mean, spec.std)).numpy()
    rows, paths = [], []
    for digit, label in enumerate(LABELS):
        position = int(np.flatnonzero((test_labels == digit) & (predictions == digit))[0])
        path = directory / f"digit-{label}.png"
        Image.fromarray(test_images[position], "RGB").save(path)
        rows.append(f"| `{path.name}` | {label} | {position} | {int(test_indices[position])} |")
        paths.append(path)
    readme = [
        "# Digit examples",
        "",
        "One held-out image per class from `niff.digits.load_split()` (32×32 RGB, saved from the exact",
        "uint8 arrays): the first held-out image of each class that the shipped checkpoint classifies",
        "correctly. Written by `python -m niff.digits --examples examples/digits`.",
        "",
        "| file | label | held-out position | `load_digits()` index |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
    ]
    (directory / "README.md").write_text("\n".join(readme))
    return paths


def write_held_out(directory: str | Path) -> int:
    """The 450 held-out images as PNGs in torchvision's ImageFolder layout (``directory/<digit>/<n>.png``),
    what ``niff-eval --images`` reads; the number of images written."""
    directory = Path(directory)
    _, _, test_images, test_labels = load_split()
    for position, (image, label) in enumerate(zip(test_images, test_labels, strict=True)):
        folder = directory / LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "RGB").save(folder / f"{position:03d}.png")
    return len(test_labels)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: train with two threads and deterministic kernels, print the held-out score."""
    parser = argparse.ArgumentParser(prog="python -m niff.digits", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to write")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke tests)")
    parser.add_argument("--examples", type=Path, default=None, help="also write one example PNG per class here")
    parser.add_argument(
        "--held-out",
        type=Path,
        default=None,
        help="only write the held-out images as DIR/<digit>/<n>.png (no training)",
    )
    args = parser.parse_args(argv)
    if args.held_out is not None:
        print(f"wrote {write_held_out(args.held_out)} held-out images into {args.held_out}")
        return
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    result = train(args.out, epochs=args.epochs, seed=args.seed, max_steps=args.max_steps)
    print(
        f"held-out accuracy {result.accuracy:.4f} ({result.correct}/{result.total}); "
        f"{result.parameters} parameters, {result.path.stat().st_size} bytes; trained in {result.seconds:.0f}s"
    )
    if args.examples is not None:
        for path in write_examples(args.examples, result.path):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
