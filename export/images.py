"""Real images for the parity gate: scikit-learn's bundled sample photos and a user's calibration folder,
through the contract's preprocessing, so the gate checks the very pixels niff-serve feeds the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from niff_contract import ImageError, Preprocessing, Preprocessor
from niff_export.errors import ExportError

# What niff-serve decodes (the contract's formats), by file name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def sample_photos(preprocessing: Preprocessing) -> Tensor:
    """scikit-learn's two sample photos (a temple in China, a flower) as a [2, 3, S, S] batch."""
    from sklearn.datasets import load_sample_images

    preprocessor = Preprocessor(preprocessing)
    arrays = [preprocessor.transform(Image.fromarray(photo)) for photo in load_sample_images().images]
    return torch.from_numpy(np.stack(arrays))


def folder_images(folder: Path, preprocessing: Preprocessing) -> Tensor:
    """Every image file directly in ``folder`` (sorted by name), preprocessed: [N, 3, S, S]."""
    if not folder.is_dir():
        raise ExportError(f"calibration folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ExportError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    preprocessor = Preprocessor(preprocessing)
    arrays = []
    for path in files:
        try:
            arrays.append(preprocessor(path.read_bytes()))
        except (OSError, ImageError) as exc:
            raise ExportError(f"cannot read the calibration image {path}: {exc}") from None
    return torch.from_numpy(np.stack(arrays))
