"""What an export records about a model, resolved once (timm's ``resolve_data_config`` pattern)."""

from __future__ import annotations

import torch
from torch import nn

import niff


def resolve_spec(model: nn.Module, size: int) -> niff.ModelSpec:
    """``model.niff_spec`` (``niff.create_model``/``niff.load_checkpoint`` set it), or for any other model built
    from niff layers one read off the model: its class, its class count from one forward pass at ``size``, and
    ImageNet's preprocessing."""
    spec = getattr(model, "niff_spec", None)
    if spec is not None:
        return spec
    with torch.no_grad():
        num_classes = int(model(torch.zeros(1, 3, size, size)).shape[1])
    return niff.ModelSpec(
        arch=None,
        builder=type(model).__name__,
        arch_kwargs={},
        num_classes=num_classes,
        preprocessing=niff.Preprocessing(),
    )
