"""Accuracy on your own labelled images: top-1 and top-5 of an eager checkpoint, its exact export and a compact
export side by side, every image through the model folder's own preprocessing (what niff-serve feeds).

Images come in torchvision's ImageFolder layout: ``DIR/<class name>/<image>``, the class names being the
model's labels.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from niff_contract import ImageError, ModelFolder, Preprocessor, read_model_folder
from niff_export.api import export_model, load_model
from niff_export.compact import CompactRequest
from niff_export.errors import ExportError
from niff_export.images import Sample, image_folder

# A candidate model: a normalized batch [N, 3, S, S] in, logits [N, classes] out.
Predict = Callable[[np.ndarray], np.ndarray]
# Called after each batch with (images done, images in all).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Score:
    """One candidate's result on the images."""

    candidate: str
    top1: int
    top5: int
    images: int

    @property
    def top1_accuracy(self) -> float:
        return self.top1 / self.images

    @property
    def top5_accuracy(self) -> float:
        return self.top5 / self.images


@dataclass(frozen=True)
class Evaluation:
    model: str
    images_dir: Path
    classes: int
    scores: tuple[Score, ...]

    def to_json(self) -> str:
        scores = [
            asdict(score) | {"top1_accuracy": score.top1_accuracy, "top5_accuracy": score.top5_accuracy}
            for score in self.scores
        ]
        record = {"model": self.model, "images_dir": str(self.images_dir), "classes": self.classes, "scores": scores}
        return json.dumps(record, indent=2) + "\n"

    def markdown(self) -> str:
        lines = [
            f"Accuracy of {self.model} on {self.scores[0].images} images of {self.classes} classes "
            f"in {self.images_dir}:",
            "",
            "| candidate | top-1 | top-5 |",
            "|---|---:|---:|",
        ]
        for score in self.scores:
            lines.append(
                f"| {score.candidate} | {100 * score.top1_accuracy:.2f} % ({score.top1}/{score.images}) "
                f"| {100 * score.top5_accuracy:.2f} % ({score.top5}/{score.images}) |"
            )
        return "\n".join(lines) + "\n"


def evaluate(
    name: str,
    candidates: Mapping[str, Predict],
    images_dir: Path,
    folder: ModelFolder,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Evaluation:
    """Top-1 and top-5 of each candidate on the images, preprocessed as ``folder`` prescribes."""
    labels = list(folder.labels)
    samples = image_folder(images_dir, labels, "--images")
    preprocessor = Preprocessor(folder.manifest.preprocessing)
    top1 = dict.fromkeys(candidates, 0)
    top5 = dict.fromkeys(candidates, 0)
    done = 0
    for batch, truth in _batches(samples, preprocessor, batch_size):
        for candidate, predict in candidates.items():
            best = np.argsort(-predict(batch), axis=1)[:, :5]
            top1[candidate] += int((best[:, 0] == truth).sum())
            top5[candidate] += int((best == truth[:, None]).any(axis=1).sum())
        done += len(truth)
        if progress is not None:
            progress(done, len(samples))
    scores = tuple(Score(candidate, top1[candidate], top5[candidate], len(samples)) for candidate in candidates)
    return Evaluation(name, images_dir, len(labels), scores)


def _batches(
    samples: Sequence[Sample], preprocessor: Preprocessor, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(samples), size):
        chunk = samples[start : start + size]
        arrays = []
        for sample in chunk:
            try:
                arrays.append(preprocessor(sample.path.read_bytes()))
            except (ImageError, OSError) as exc:
                raise ExportError(f"{sample.path}: {exc}") from None
        yield np.stack(arrays), np.array([sample.label for sample in chunk])


def onnx_predict(path: Path) -> Predict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(["logits"], {"input": batch})[0]


def eager_predict(model: nn.Module) -> Predict:
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    return predict


def folder_candidates(folder: ModelFolder) -> dict[str, Predict]:
    """An exported folder's ONNX artifact (what niff-serve runs by default)."""
    path = folder.artifact_path("onnx")
    if path is None:
        raise ExportError(f"{folder.path}: niff-eval runs a folder's model.onnx; this folder has none")
    kind = "compact export" if folder.manifest.compact is not None else "exact export"
    return {f"{kind} (ONNX, {folder.name})": onnx_predict(folder.verify_artifact("onnx"))}


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    size: int,
    images_dir: Path,
    *,
    compact: CompactRequest | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    ema: bool = False,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> Evaluation:
    """The eager checkpoint, its exact export and (with ``compact``) a compact export, side by side."""
    model = load_model(checkpoint, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, ema=ema)
    with tempfile.TemporaryDirectory(prefix="niff-eval-") as tmp:
        exact = export_model(model, size, tmp, "exact", formats=("onnx",))
        folder = read_model_folder(exact.path)
        candidates = {
            "eager PyTorch": eager_predict(model),
            "exact export (ONNX)": onnx_predict(exact.path / "1" / "model.onnx"),
        }
        if compact is not None:
            compacted = export_model(model, size, tmp, "compact", formats=("onnx",), compact=compact)
            candidates["compact export (ONNX)"] = onnx_predict(compacted.path / "1" / "model.onnx")
        name = model.niff_spec.arch or Path(checkpoint).stem
        return evaluate(name, candidates, images_dir, folder, batch_size, progress)


def evaluate_folder(path: Path, images_dir: Path, batch_size: int = 32, progress: Progress | None = None) -> Evaluation:
    folder = read_model_folder(path)
    return evaluate(folder.name, folder_candidates(folder), images_dir, folder, batch_size, progress)
