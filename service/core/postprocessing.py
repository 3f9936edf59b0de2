"""From logits to what clients read: probabilities and the best classes."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 so large logits neither overflow nor lose the small classes."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most probable classes per row, best first; ties keep the lower index first."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
