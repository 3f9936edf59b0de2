"""Plain twins of the NIFF zoo models for the benchmarks: the same network with spatial convolutions.

Built with torch.nn alone (no torchvision): every NIFF slot becomes the convolution it replaced, so a
NIFF ResNet's twin has torchvision's ResNet structure and a NIFF ConvNeXt's twin is ConvNeXt with its
7x7 depthwise convolutions.
"""

from __future__ import annotations

import copy

from torch import nn

from niff.layers import FreqConv1x1, FreqConvDW, FreqConvFull


def spatial_twin(model: nn.Module, depthwise_kernel: int = 3) -> nn.Module:
    """``model`` with a plain convolution in every NIFF slot (``depthwise_kernel`` for depthwise slots)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        replacement = None
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], FreqConvDW):
            replacement = nn.Conv2d(module[1].in_planes, module[1].out_planes, 3, padding=1, bias=False)
        elif isinstance(module, FreqConvFull):
            replacement = nn.Conv2d(module.in_planes, module.out_planes, 3, padding=1, bias=False)
        elif isinstance(module, FreqConvDW) and module.transform == "fftifft":
            k = depthwise_kernel
            replacement = nn.Conv2d(module.planes, module.planes, k, padding=k // 2, groups=module.planes, bias=False)
        elif isinstance(module, FreqConv1x1) and module.transform == "fftifft":
            replacement = (
                nn.Linear(module.in_planes, module.out_planes, bias=False)
                if module.channels_last
                else nn.Conv2d(module.in_planes, module.out_planes, 1, bias=False)
            )
        if replacement is not None and name:
            model.set_submodule(name, replacement)
    return model.eval()
