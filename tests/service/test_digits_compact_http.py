"""The digits model exported with --compact-kernel 9 and served over HTTP scores what an independent
truncation of the same filters scores: the compact export approximates exactly what it says it does."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

import niff
import niff_export
from niff import digits
from niff.layers import FreqConvDW
from niff_export.compact import CompactRequest

from .conftest import classify_digits

KERNEL = 9
# Maps below this side stay spectral (the documented rule of compact export), as do maps no larger than K.
SMALLEST_COMPACTED_MAP = 8
BATCH = 15


def truncated_model(model: nn.Module, kernel: int) -> nn.Module:
    """The eager model with every depthwise filter on a map of at least 8x8 and larger than ``kernel`` replaced by
    its spatial kernel cut to the centred ``kernel``x``kernel`` window, applied as a sum of shifted copies.

    A layer's kernel is its impulse response, found by running the layer itself on a unit impulse: for a
    ``"fft"`` layer the reference's all-axis-shifted spectrum is shifted back and inverse-transformed. Its
    replacement hands on the same layout (shifted spectrum of the filtered map), so the following pointwise
    layer and everything after it run unchanged.
    """
    sizes: dict[nn.Module, int] = {}

    def probe(module: nn.Module, args: tuple[Tensor]) -> None:
        sizes.setdefault(module, args[0].shape[-1])

    layers = [m for m in model.modules() if isinstance(m, FreqConvDW)]
    probes = [m.register_forward_pre_hook(probe) for m in layers]
    with torch.no_grad():
        model(torch.zeros(1, 3, digits.INPUT_SIZE, digits.INPUT_SIZE))
    for probe in probes:
        probe.remove()
    radius = kernel // 2
    for layer in layers:
        n = sizes[layer]
        if n < SMALLEST_COMPACTED_MAP or n <= kernel:
            continue
        impulse = torch.zeros(1, layer.planes, n, n)
        impulse[:, :, 0, 0] = 1
        with torch.no_grad():
            response = layer.forward(impulse)
        taps = torch.fft.ifft2(torch.fft.ifftshift(response)).real[0] if layer.transform == "fft" else response[0]

        def replace(module: nn.Module, args: tuple[Tensor], output: Tensor, taps: Tensor = taps) -> Tensor:
            x = args[0]
            y = torch.zeros_like(x)
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    weight = taps[:, dy % x.shape[-2], dx % x.shape[-1]].reshape(1, -1, 1, 1)
                    y = y + weight * torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            return torch.fft.fftshift(torch.fft.fft2(y)) if module.transform == "fft" else y

        layer.register_forward_hook(replace)
    return model


@pytest.fixture(scope="module")
def compact_server(tmp_path_factory: pytest.TempPathFactory, start_server):
    repository = tmp_path_factory.mktemp("compact_digits")
    niff_export.export_checkpoint(
        digits.DEFAULT_CHECKPOINT,
        digits.INPUT_SIZE,
        repository,
        name="digits",
        formats=["onnx"],
        compact=CompactRequest(kernel=KERNEL),
    )
    return repository, start_server(repository, "--max-batch-size", str(BATCH))


def test_served_compact_digits_score_the_independent_truncation(compact_server):
    repository, server = compact_server
    record = json.loads((repository / "digits" / "niff.json").read_text())["compact"]
    assert [c["kernel"] for c in record["layers"]] == [KERNEL, KERNEL, KERNEL, None, None]

    _, _, images, labels = digits.load_split()
    served = classify_digits(server, images, BATCH)
    assert len(served) == digits.HELD_OUT_SIZE

    model = niff.load_checkpoint(digits.DEFAULT_CHECKPOINT)
    spec = model.niff_spec.preprocessing
    independent = digits.predict(truncated_model(model, KERNEL), digits.to_tensor(images, spec.mean, spec.std))
    served_accuracy = float((served == labels).mean())
    independent_accuracy = float((independent.numpy() == labels).mean())
    assert abs(served_accuracy - independent_accuracy) <= 0.002, (served_accuracy, independent_accuracy)
    assert 0.95 <= served_accuracy < digits.SHIPPED_HELD_OUT_ACCURACY  # an approximation that costs a little
