"""Models with trained-like statistics for export tests.

A freshly initialised NIFF network (random MLP filters, identity BatchNorm statistics, ConvNeXt's
1e-6 layer scale) either blows activations up or hides whole blocks. Calibrating BatchNorm on a
batch and drawing non-trivial affine and layer-scale values makes every layer matter, as in a
trained checkpoint, so parity checks test something. Residual branches end with a small BatchNorm
scale, as trained ResNets do; without it a deep random ResNet is chaotic and even its own float32
eager output drifts ~3e-4 from float64.
"""

from __future__ import annotations

import torch
from torch import nn

import niff
from niff.models import BasicBlock, Bottleneck


def realistic(model: nn.Module, size: int, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    residual_scale: dict[nn.Module, float] = {}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.4 + 0.2)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.4 - 0.2)
            last_norm = getattr(module, "bn3", None) or getattr(module, "bn2", None)
            if isinstance(module, (BasicBlock, Bottleneck)) and last_norm is not None:
                residual_scale[last_norm] = 0.2
            gamma = getattr(module, "gamma", None)
            if isinstance(gamma, nn.Parameter):
                gamma.copy_(torch.rand(gamma.shape, generator=generator) * 0.7 + 0.3)
        for norm, scale in residual_scale.items():
            norm.weight.mul_(scale)
        model.train()
        model(torch.randn(8, 3, size, size, generator=generator))
    return model.eval()


def zoo_model(name: str, size: int, num_classes: int = 10, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return realistic(niff.create_model(name, num_classes=num_classes, **kwargs), size)


class OnePercentOff(nn.Module):
    """An artifact that is 1 % off: what a wrong lowering would produce (for the parity gate's tests)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1.01
