"""Bake a NIFF model at one input size: fixed spectral filters, exact simplifications, BatchNorm folding.

The model is traced with torch.fx (NIFF layers as leaves), a shape pass finds each layer's feature-map
size, and the graph is rewritten:

* depthwise ``fft→filter→ifft`` → ``SpectralConv``;
* split ``FreqConvDW(fft) → FreqConv1x1(ifft)`` → ``SpectralConv`` then a 1x1 ``Conv2d`` whose weight
  carries both channel rolls;
* full ``fft→mix→ifft`` → ``SpectralMix``;
* pointwise ``fft→linear→ifft`` → a plain bias-free 1x1 ``Conv2d`` (``Linear`` in channels-last form):
  the FFT is linear and the mix is real, so the two transforms cancel exactly;
* eval-mode BatchNorm after any of these linear layers, and a per-channel scale (ConvNeXt's layer
  scale) after a ``Linear``, fold into that layer's weights and bias.

The result is an ordinary ``nn.Module`` (an fx ``GraphModule``) with no MLPs left.
"""

from __future__ import annotations

import copy
import operator

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from niff.layers import FreqConv1x1, FreqConvDW, FreqConvFull
from niff_export.errors import ExportError
from niff_export.spectral import (
    SpectralConv,
    SpectralMix,
    depthwise_spectrum,
    mixing_spectrum,
    split_pointwise_weight,
)

NIFF_LAYERS = (FreqConvDW, FreqConvFull, FreqConv1x1)
FOLDS_BATCHNORM = (nn.Conv2d, SpectralConv, SpectralMix)


class _NiffTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, NIFF_LAYERS) or super().is_leaf_module(m, module_qualified_name)


def bake(model: nn.Module, size: int, example: Tensor | None = None) -> fx.GraphModule:
    """The model with every NIFF layer replaced by its fixed-filter equivalent at ``size``×``size`` input.

    ``example`` overrides the default [1, 3, size, size] input used to find feature-map sizes (for
    models that take other shapes, such as a single layer). The input model is not modified. Raises
    ExportError for layer arrangements that have no exact baked form (a spectrum-valued layer whose
    consumer is not the matching inverse layer).
    """
    model = copy.deepcopy(model).eval()
    if isinstance(model, NIFF_LAYERS):  # fx traces into the root module; a lone layer must be a leaf
        model = nn.Sequential(model)
    try:
        graph = _NiffTracer().trace(model)
    except Exception as exc:
        raise ExportError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    gm = fx.GraphModule(model, graph, class_name=f"Baked{type(model).__name__}")
    try:
        with torch.no_grad():
            # One real batch-1 forward: cheaper here than fake-tensor propagation, whose per-op overhead dominates.
            ShapeProp(gm).propagate(torch.zeros(1, 3, size, size) if example is None else example[:1])
    except Exception as exc:
        raise ExportError(f"the model cannot run at {size}x{size}: {exc}") from exc
    with torch.no_grad():
        _replace_niff_layers(gm)
        _fold_batchnorms(gm)
        _fold_channel_scales(gm)
    for node in gm.graph.nodes:
        node.type = None  # traced annotations name types TorchScript cannot resolve
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _feature_size(node: fx.Node) -> int:
    return int(node.args[0].meta["tensor_meta"].shape[-1])


def _pointwise_conv(weight: Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=False)
    conv.weight.copy_(weight.reshape(*weight.shape, 1, 1))
    return conv


def _replace_niff_layers(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        layer = _module(gm, node)
        if not isinstance(layer, NIFF_LAYERS):
            continue
        if isinstance(layer, FreqConv1x1) and layer.transform == "ifft":
            if node.meta.get("baked"):
                continue
            raise ExportError(f"{node.target}: a pointwise inverse layer must follow a depthwise 'fft' layer")
        if layer.transform not in ("fftifft", "fft"):
            raise ExportError(
                f"{node.target}: {type(layer).__name__}(transform={layer.transform!r}) has no baked form alone"
            )
        size = _feature_size(node)
        if isinstance(layer, FreqConv1x1):
            weight = layer.mlp.weight.detach()
            if layer.channels_last:
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                linear.weight.copy_(weight)
                gm.set_submodule(node.target, linear)
            else:
                gm.set_submodule(node.target, _pointwise_conv(weight))
        elif isinstance(layer, FreqConvFull):
            if layer.transform != "fftifft":
                raise ExportError(f"{node.target}: a full layer with transform='fft' has no baked form")
            gm.set_submodule(node.target, SpectralMix(mixing_spectrum(layer, size)))
        elif layer.transform == "fftifft":
            gm.set_submodule(node.target, SpectralConv(depthwise_spectrum(layer, size)))
        else:
            _replace_split(gm, node, layer, size)


def _replace_split(gm: fx.GraphModule, node: fx.Node, layer: FreqConvDW, size: int) -> None:
    users = list(node.users)
    pointwise = _module(gm, users[0]) if len(users) == 1 else None
    if not (isinstance(pointwise, FreqConv1x1) and pointwise.transform == "ifft" and not pointwise.channels_last):
        raise ExportError(
            f"{node.target}: a depthwise 'fft' layer must feed exactly one pointwise 'ifft' layer (a split convolution)"
        )
    gm.set_submodule(node.target, SpectralConv(depthwise_spectrum(layer, size)))
    gm.set_submodule(users[0].target, _pointwise_conv(split_pointwise_weight(pointwise, layer.planes).float()))
    users[0].meta["baked"] = True


def _batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``scale·x + shift`` (float64)."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


def _scaled_conv(conv: nn.Conv2d, scale: Tensor, shift: Tensor) -> nn.Conv2d:
    folded = copy.deepcopy(conv)
    folded.weight.copy_((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).float())
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    folded.bias = nn.Parameter(bias.float())
    return folded


def _fold_batchnorms(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.BatchNorm2d) or bn.track_running_stats is False:
            continue
        source = node.args[0]
        layer = _module(gm, source)
        if not isinstance(layer, FOLDS_BATCHNORM) or len(source.users) != 1:
            continue
        scale, shift = _batchnorm_affine(bn)
        folded = _scaled_conv(layer, scale, shift) if isinstance(layer, nn.Conv2d) else layer.scaled(scale, shift)
        gm.set_submodule(source.target, folded)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)


def _fold_channel_scales(gm: fx.GraphModule) -> None:
    """Fold ``gamma * linear(x)`` (ConvNeXt's layer scale) into the Linear's weight rows."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (operator.mul, torch.mul) or len(node.args) != 2:
            continue
        params = [a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
        sources = [a for a in node.args if isinstance(a, fx.Node) and isinstance(_module(gm, a), nn.Linear)]
        if len(params) != 1 or len(sources) != 1 or len(sources[0].users) != 1:
            continue
        gamma = _attr(gm, params[0].target).detach().double()
        linear = _module(gm, sources[0])
        if gamma.ndim != 1 or gamma.shape[0] != linear.out_features:
            continue
        folded = copy.deepcopy(linear)
        folded.weight.copy_((linear.weight.double() * gamma[:, None]).float())
        if linear.bias is not None:
            folded.bias.copy_((linear.bias.double() * gamma).float())
        gm.set_submodule(sources[0].target, folded)
        node.replace_all_uses_with(sources[0])
        gm.graph.erase_node(node)


def _attr(gm: fx.GraphModule, target: str) -> Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)
