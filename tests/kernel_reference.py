"""An independent transcription of the kernel measures, from first principles and in NumPy.

Kernels are impulse responses of the eager (reference-faithful) layers, windows are built tap by tap
from their definition (every circular offset with |dy|, |dx| <= (K-1)/2), and nothing is shared with
``niff_export.kernels`` — so agreement tests the definitions, not a copy of them.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from niff.layers import FreqConvDW, FreqConvFull


def impulse_kernels(layer: nn.Module, n: int) -> np.ndarray:
    """Kernels [kernels, n, n] (origin at [0, 0]) of a depthwise or full NIFF layer, by feeding it unit impulses.

    Depthwise: one impulse in every channel; the output channel c is kernel c. A ``"fft"`` layer returns
    the reference's all-axis-shifted spectrum, so it is shifted back (all axes) and inverse-transformed.
    Full: batch item i holds an impulse in input channel i only; output channel o is kernel (i, o).
    """
    layer = copy.deepcopy(layer).double().eval()
    channels = layer.planes if isinstance(layer, FreqConvDW) else layer.in_planes
    if isinstance(layer, FreqConvDW):
        impulse = torch.zeros(1, channels, n, n, dtype=torch.float64)
        impulse[:, :, 0, 0] = 1
    else:
        impulse = torch.zeros(channels, channels, n, n, dtype=torch.float64)
        impulse[torch.arange(channels), torch.arange(channels), 0, 0] = 1
    with torch.no_grad():
        out = layer(impulse)
    if layer.transform == "fft":
        out = torch.fft.ifft2(torch.fft.ifftshift(out)).real
    return out.reshape(-1, n, n).numpy()


def window_mask(n: int, kernel: int) -> np.ndarray:
    radius = (kernel - 1) // 2
    mask = np.zeros((n, n), dtype=bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            mask[dy % n, dx % n] = True
    return mask


def window_sides(n: int) -> list[int]:
    """Odd K from 1 until the window holds every tap."""
    sides = [1]
    while not window_mask(n, sides[-1]).all():
        sides.append(sides[-1] + 2)
    return sides


def shares(kernels: np.ndarray, power: int = 1) -> np.ndarray:
    """[kernels, len(sides)]: share of sum |k|**power inside each window."""
    n = kernels.shape[-1]
    weights = np.abs(kernels) ** power
    total = weights.sum(axis=(-2, -1))
    return np.stack([(weights * window_mask(n, k)).sum(axis=(-2, -1)) / total for k in window_sides(n)], axis=-1)


def spectral_error(kernels: np.ndarray, kernel: int, full_shape: tuple[int, int] | None = None) -> float:
    """max over frequencies of the gain of H - H_K over that of H (full layers: spectral norm of [in, out])."""
    n = kernels.shape[-1]
    spectrum = np.fft.fft2(kernels)
    residual = np.fft.fft2(kernels * ~window_mask(n, kernel))
    if full_shape is None:
        return float(np.abs(residual).max() / np.abs(spectrum).max())

    def gain(s: np.ndarray) -> float:
        s = s.reshape(*full_shape, n, n)
        return max(np.linalg.norm(s[:, :, u, v], 2) for u in range(n) for v in range(n))

    return gain(residual) / gain(spectrum)


def filter_layer_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Module, int]]:
    """Every depthwise/full NIFF layer by name with the map size it sees for input ``x``."""
    found: dict[str, tuple[nn.Module, int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (FreqConvDW, FreqConvFull)):

            def hook(module: nn.Module, args: tuple, name: str = name) -> None:
                found.setdefault(name, (module, args[0].shape[-1]))

            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return found
