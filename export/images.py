"""Real images for the parity gate: scikit-learn's bundled sample photos and a user's calibration folder,
preprocessed like the model expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from niff.registry import Preprocessing
from niff_export.errors import ExportError

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def preprocess(image: Image.Image, preprocessing: Preprocessing) -> Tensor:
    """Resize the short side, center-crop, scale to [0, 1], normalize: [3, S, S] float32."""
    image = image.convert("RGB")
    short = preprocessing.resize
    width, height = image.size
    scale = short / min(width, height)
    resized = image.resize(
        (max(short, round(width * scale)), max(short, round(height * scale))),
        _RESAMPLE.get(preprocessing.interpolation, Image.Resampling.BILINEAR),
    )
    size = preprocessing.input_size
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    array = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    array = (array - np.asarray(preprocessing.mean, dtype=np.float32)) / np.asarray(preprocessing.std, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def sample_photos(preprocessing: Preprocessing) -> Tensor:
    """scikit-learn's two sample photos (a temple in China, a flower) as a [2, 3, S, S] batch."""
    from sklearn.datasets import load_sample_images

    return torch.stack([preprocess(Image.fromarray(photo), preprocessing) for photo in load_sample_images().images])


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def folder_images(folder: Path, preprocessing: Preprocessing) -> Tensor:
    """Every image file directly in ``folder`` (sorted by name), preprocessed: [N, 3, S, S]."""
    if not folder.is_dir():
        raise ExportError(f"calibration folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ExportError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(preprocess(image, preprocessing))
        except (OSError, ValueError) as exc:
            raise ExportError(f"cannot read the calibration image {path}: {exc}") from None
    return torch.stack(images)
