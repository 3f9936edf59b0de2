"""A lowered spectral layer run one image at a time in ONNX: a ``Scan`` over the batch axis.

At 56²×64 and batch 8 every intermediate of a lowered layer is several MB, so each of its products
and passes streams the whole batch through memory; one image's intermediates stay in the core's
cache. ONNX Runtime on CPU runs large layers faster that way (docs/benchmarks.md). Elsewhere a loop
costs a launch per image and operation, so a layer gets this only when ``niff-export --tune``
measured it faster on the runtime at hand, never by default. Torch and TorchScript run the whole batch.
"""

from __future__ import annotations

import io

import onnx
import torch
from onnx import helper
from torch import Tensor, nn

# Per-layer lowerings "<name>-per-image" wrap the lowering <name> in a PerImage module.
SUFFIX = "-per-image"
# The placeholder op's domain in the exported graph; no placeholder survives write_onnx.
DOMAIN = "niff_export.per_image"


class PerImage(nn.Module):
    """``layer`` applied to the whole batch, exported to ONNX as a placeholder that ``expand`` turns into a Scan."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.index = 0  # which placeholder this is, set by write_onnx before an export

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self.layer(x)
        return _placeholder(x, self)


@torch.jit.unused
def _placeholder(x: Tensor, module: PerImage) -> Tensor:
    if not torch.onnx.is_in_onnx_export():
        return module.layer(x)

    layer = module.layer

    class Placeholder(torch.autograd.Function):
        """One node in the traced graph with the layer's output shape (the tracer records a Function, not its body)."""

        @staticmethod
        def forward(ctx, x: Tensor) -> Tensor:
            return x.new_zeros(x.shape[0], layer.out_channels, layer.size, layer.size)

        @staticmethod
        def symbolic(g, x):
            shape = [None, layer.out_channels, layer.size, layer.size]
            return g.op(f"{DOMAIN}::PerImage", x, index_i=module.index).setType(x.type().with_sizes(shape))

    return Placeholder.apply(x)


def number(model: nn.Module) -> list[PerImage]:
    """The per-image layers of ``model``, each told its index (the placeholder's attribute)."""
    layers = [module for module in model.modules() if isinstance(module, PerImage)]
    for index, layer in enumerate(layers):
        layer.index = index
    return layers


def expand(model: onnx.ModelProto, layers: list[PerImage], opset: int) -> onnx.ModelProto:
    """Every placeholder replaced by a Scan whose body is its layer exported alone for one image."""
    nodes = []
    for node in model.graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        index = helper.get_attribute_value(node.attribute[0])
        body = _body(layers[index].layer, opset, prefix=f"per_image_{index}/")
        nodes.append(
            helper.make_node(
                "Scan", [node.input[0]], [node.output[0]], name=f"PerImage_{index}", body=body, num_scan_inputs=1
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # The placeholders' recorded shapes are their inputs'; shape inference derives the Scans' own.
    outputs = {node.output[0] for node in nodes if node.op_type == "Scan"}
    shapes = [value for value in model.graph.value_info if value.name not in outputs]
    del model.graph.value_info[:]
    model.graph.value_info.extend(shapes)
    kept = [entry for entry in model.opset_import if entry.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def _body(layer: nn.Module, opset: int, prefix: str) -> onnx.GraphProto:
    """``layer`` for one image [C, n, n]: exported alone with a batch of one, between Unsqueeze and Squeeze."""
    buffer = next(layer.buffers())
    example = torch.zeros(1, layer.channels, layer.size, layer.size, dtype=buffer.dtype)
    stream = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            layer, (example,), stream, dynamo=False, input_names=["x"], output_names=["y"], opset_version=opset
        )
    graph = onnx.load_from_string(stream.getvalue()).graph
    names = {name: prefix + name for name in _names(graph)}
    for node in graph.node:
        node.name = prefix + node.name
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names.get(name, name) for name in node.output]
    for tensor in graph.initializer:
        tensor.name = names[tensor.name]
    axis = helper.make_tensor(prefix + "axis", onnx.TensorProto.INT64, [1], [0])
    image, result = prefix + "image", prefix + "result"
    elem_type = graph.input[0].type.tensor_type.elem_type
    return helper.make_graph(
        [
            helper.make_node("Unsqueeze", [image, axis.name], [names["x"]]),
            *graph.node,
            helper.make_node("Squeeze", [names["y"], axis.name], [result]),
        ],
        prefix.rstrip("/"),
        [helper.make_tensor_value_info(image, elem_type, [layer.channels, layer.size, layer.size])],
        [helper.make_tensor_value_info(result, elem_type, [layer.out_channels, layer.size, layer.size])],
        initializer=[*graph.initializer, axis],
    )


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {value.name for value in graph.input} | {value.name for value in graph.output}
    names |= {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        names.update(name for name in (*node.input, *node.output) if name)
    return names
