"""Real images for the parity gate and niff-eval: scikit-learn's bundled sample photos, a user's flat folder
of images, and a user's labelled ImageFolder tree, through the contract's preprocessing, so the gate and the
scores see the very pixels niff-serve feeds the model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from niff_contract import ImageError, Preprocessing, Preprocessor
from niff_export.errors import ExportError

# What niff-serve decodes (the contract's formats), by file name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# What the gate's built-in photos are, for messages that say why they may not fit a model.
SAMPLE_PHOTOS = "two generic landscape photos (scikit-learn's sample images: a temple in China, a flower)"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class CalibrationImages:
    """A ``--calibration`` folder, preprocessed: ``labels`` (class indices) when it is an ImageFolder tree."""

    images: Tensor  # [N, 3, S, S]
    labels: Tensor | None  # [N], or None for a flat folder of images

    def __len__(self) -> int:
        return len(self.images)


def sample_photos(preprocessing: Preprocessing) -> Tensor:
    """scikit-learn's two sample photos (a temple in China, a flower) as a [2, 3, S, S] batch."""
    from sklearn.datasets import load_sample_images

    preprocessor = Preprocessor(preprocessing)
    arrays = [preprocessor.transform(Image.fromarray(photo)) for photo in load_sample_images().images]
    return torch.from_numpy(np.stack(arrays))


def image_folder(root: Path, labels: Sequence[str], option: str) -> list[Sample]:
    """Every image of an ImageFolder tree, labelled by its folder's name; the names must be the model's labels.

    ``option`` names the command-line option the folder came from, in the messages.
    """
    if not root.is_dir():
        raise ExportError(f"{option} {root}: not a folder (expected DIR/<class name>/<image>)")
    classes = _class_folders(root)
    if not classes:
        raise ExportError(f"{option} {root}: no class folders (expected DIR/<class name>/<image>)")
    index = {label: position for position, label in enumerate(labels)}
    unknown = [path.name for path in classes if path.name not in index]
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ExportError(
            f"{option} {root}: the class folders {shown} are not labels of the model; its labels are "
            f"{', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''}"
        )
    samples = [
        Sample(path, index[folder.name])
        for folder in classes
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]
    if not samples:
        raise ExportError(f"{option} {root}: the class folders hold no files")
    return samples


def calibration_images(folder: Path, preprocessing: Preprocessing, labels: Sequence[str]) -> CalibrationImages:
    """A ``--calibration`` folder: an ImageFolder tree (labelled: the gate is the accuracy drop) or a flat
    folder of images (unlabelled: the gate is agreement), never both at once, where a loose image would
    otherwise be ignored or a class folder silently left out."""
    if not folder.is_dir():
        raise ExportError(f"calibration folder {folder} does not exist or is not a folder")
    loose = _image_files(folder)
    classes = _class_folders(folder)
    if loose and classes:
        raise ExportError(
            f"--calibration {folder} mixes class folders ({', '.join(path.name for path in classes[:3])}"
            f"{' ...' if len(classes) > 3 else ''}) with loose images ({loose[0].name}"
            f"{' ...' if len(loose) > 1 else ''}): give either labelled images as DIR/<class name>/<image> "
            "(the gate is then the accuracy drop) or a flat folder of images (the gate is then agreement)"
        )
    if classes:
        samples = image_folder(folder, labels, "--calibration")
        images = _preprocessed([sample.path for sample in samples], preprocessing)
        return CalibrationImages(images, torch.tensor([sample.label for sample in samples]))
    if not loose:
        raise ExportError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return CalibrationImages(_preprocessed(loose, preprocessing), None)


def _class_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _preprocessed(files: Sequence[Path], preprocessing: Preprocessing) -> Tensor:
    preprocessor = Preprocessor(preprocessing)
    arrays = []
    for path in files:
        try:
            arrays.append(preprocessor(path.read_bytes()))
        except (OSError, ImageError) as exc:
            raise ExportError(f"cannot read the calibration image {path}: {exc}") from None
    return torch.from_numpy(np.stack(arrays))
