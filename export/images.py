"""Real photos for the parity gate: scikit-learn's bundled sample images, through the contract's preprocessing.

The gate therefore checks the very pixels niff-serve feeds the model for these photos.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from niff_contract import Preprocessing, Preprocessor


def sample_photos(preprocessing: Preprocessing) -> Tensor:
    """scikit-learn's two sample photos (a temple in China, a flower) as a [2, 3, S, S] batch."""
    from sklearn.datasets import load_sample_images

    preprocessor = Preprocessor(preprocessing)
    arrays = [preprocessor.transform(Image.fromarray(photo)) for photo in load_sample_images().images]
    return torch.from_numpy(np.stack(arrays))
