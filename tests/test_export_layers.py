"""Baked and lowered layers against the reference's golden vectors, and the exact algebra behind them."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from reference_vectors import layer_for, relative_error, vectors

from niff.layers import FreqConv1x1, FreqConvDW, split_conv
from niff_export import bake, lower, per_image
from niff_export.artifacts import write_onnx
from niff_export.lowering import (
    KRONECKER_MAX_SIZE,
    KRONECKER_TUNE_MAX_SIZE,
    LAYER_LOWERINGS,
    MATMUL_LOWERINGS,
    PAIRED_MIN_SIZE,
    PER_IMAGE_LOWERINGS,
    default_layer_lowering,
    spectral_layers,
)
from niff_export.spectral import SpectralConv, SpectralMix, half_spectrum
from niff_export.tuning import candidates

GOLDEN_LAYERS = [g for g in vectors() if g.is_layer]


def lowered(baked: torch.nn.Module, choice: str) -> torch.nn.Module:
    """``baked`` with every spectral layer lowered the way ``choice`` (a per-layer lowering) says."""
    family = "torch" if choice == "fft" else "matmul"
    return lower(baked, family, {name: choice for name, _ in spectral_layers(baked)})


def _loaded(golden):
    data = golden.load()
    layer = layer_for(golden.meta)
    layer.load_state_dict(data["state_dict"], strict=True)
    return layer.eval(), data


@pytest.mark.parametrize("choice", LAYER_LOWERINGS)
@pytest.mark.parametrize("golden", GOLDEN_LAYERS, ids=lambda g: g.file)
def test_baked_layer_matches_reference(golden, choice):
    layer, data = _loaded(golden)
    baked = lowered(bake(layer, golden.meta["H"], example=data["input"]), choice)
    assert not any(isinstance(m, (FreqConvDW, FreqConv1x1)) for m in baked.modules())
    with torch.no_grad():
        out = baked(data["input"])
    assert relative_error(out, data["output"]) <= 1e-5


@pytest.mark.parametrize("choice", [*MATMUL_LOWERINGS, *PER_IMAGE_LOWERINGS])
@pytest.mark.parametrize("golden", [g for g in GOLDEN_LAYERS if g.meta["C"] == 16], ids=lambda g: g.file)
def test_onnx_layer_matches_reference(golden, choice, tmp_path):
    layer, data = _loaded(golden)
    baked = lowered(bake(layer, golden.meta["H"], example=data["input"]), choice)
    path = tmp_path / "layer.onnx"
    write_onnx(baked, data["input"], path, "matmul", None)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": data["input"].numpy()})[0]
    assert relative_error(torch.from_numpy(out), data["output"]) <= 1e-4


def test_half_spectrum_is_hermitian_and_exact():
    generator = torch.Generator().manual_seed(0)
    n = 9
    shape = (4, n, n)
    shifted = torch.complex(*(torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(2)))
    x = torch.randn(2, 4, n, n, generator=generator, dtype=torch.float64)
    expected = torch.fft.ifft2(torch.fft.ifftshift(shifted, dim=(-2, -1)) * torch.fft.fft2(x)).real
    got = torch.fft.irfft2(torch.fft.rfft2(x) * half_spectrum(shifted), s=(n, n))
    assert torch.allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 5, 8])
@pytest.mark.parametrize("make", [lambda: FreqConvDW(3), lambda: split_conv(3, 5)], ids=["dw", "split"])
def test_tiny_and_odd_maps(make, size):
    torch.manual_seed(size)
    layer = make().eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        reference = layer(x)
        for choice in LAYER_LOWERINGS:
            out = lowered(bake(layer, size, example=x), choice)(x)
            assert relative_error(out, reference) <= 1e-5, choice


def test_batchnorm_folds_into_spectral_filter():
    torch.manual_seed(0)
    model = torch.nn.Sequential(FreqConvDW(4), torch.nn.BatchNorm2d(4)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model[1].weight.data.uniform_(0.5, 2)
    model[1].bias.data.uniform_(-1, 1)
    baked = bake(model, 10, example=torch.randn(1, 4, 10, 10))
    modules = [m for m in baked.modules() if not isinstance(m, torch.fx.GraphModule)]
    assert len(modules) == 1 and isinstance(modules[0], SpectralConv) and modules[0].bias is not None
    x = torch.randn(2, 4, 10, 10)
    with torch.no_grad():
        assert relative_error(baked(x), model(x)) <= 1e-6


@pytest.mark.parametrize("choice", MATMUL_LOWERINGS)
@pytest.mark.parametrize("size", [5, 6])
def test_matmul_mix_equals_fft_mix(choice, size):
    generator = torch.Generator().manual_seed(size)
    m = size // 2 + 1
    spectrum = torch.complex(*(torch.randn(3, 4, size, m, generator=generator, dtype=torch.float64) for _ in range(2)))
    mix = SpectralMix(spectrum, torch.randn(4, generator=generator))
    model = lowered(torch.nn.Sequential(copy.deepcopy(mix)), choice)
    x = torch.randn(2, 3, size, size, generator=generator)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), mix(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("choice", [*MATMUL_LOWERINGS, *PER_IMAGE_LOWERINGS])
@pytest.mark.parametrize("mixes", [False, True], ids=["depthwise", "full"])
def test_lowered_layer_keeps_the_batch_dimension_symbolic(choice, mixes, tmp_path):
    """ONNX shape inference must see the layer's output batch as the input's, so runtimes keep fusing around it."""
    generator = torch.Generator().manual_seed(0)
    shape = (4, 6, 9, 9) if mixes else (4, 9, 9)
    full = torch.complex(*(torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(2)))
    layer = SpectralMix(half_spectrum(full)) if mixes else SpectralConv(half_spectrum(full))
    path = tmp_path / "layer.onnx"
    write_onnx(lowered(torch.nn.Sequential(layer), choice), torch.randn(2, 4, 9, 9), path, "matmul", None)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    dims = [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert batch and dims == [batch, 6 if mixes else 4, 9, 9]
    products = {"MatMul", "Mul", "Reshape", "Transpose", "Constant"}
    if choice in PER_IMAGE_LOWERINGS:
        (scan,) = graph.node
        assert scan.op_type == "Scan" and not any(
            entry.domain == per_image.DOMAIN for entry in onnx.load(str(path)).opset_import
        )
        body = onnx.helper.get_attribute_value(next(a for a in scan.attribute if a.name == "body"))
        assert {node.op_type for node in body.node} <= products | {"Unsqueeze", "Squeeze"}
    else:
        assert {node.op_type for node in graph.node} <= products


def test_default_table():
    def layer(size):
        return SpectralConv(torch.ones(2, size, size // 2 + 1, dtype=torch.complex128))

    assert default_layer_lowering(layer(KRONECKER_MAX_SIZE), "matmul") == "kronecker"
    assert default_layer_lowering(layer(KRONECKER_MAX_SIZE + 1), "matmul") == "separable"
    assert default_layer_lowering(layer(PAIRED_MIN_SIZE - 1), "matmul") == "separable"
    assert default_layer_lowering(layer(PAIRED_MIN_SIZE), "matmul") == "paired"
    assert default_layer_lowering(layer(56), "torch") == default_layer_lowering(layer(4), "dft") == "fft"
    model = torch.nn.Sequential(layer(4), layer(14))
    with pytest.raises(ValueError, match="unknown layer lowering 'cufft'"):
        lower(model, "matmul", {"0": "cufft"})
    chosen = lower(model, "matmul", {"1": "kronecker"})
    assert [type(m).__name__ for m in chosen] == ["KroneckerLowering", "KroneckerLowering"]


@pytest.mark.parametrize("choice", PER_IMAGE_LOWERINGS)
def test_per_image_layers_run_the_whole_batch_in_torchscript(choice):
    """Only ONNX loops over the batch; TorchScript scripts the wrapped lowering and gets the same result."""
    generator = torch.Generator().manual_seed(0)
    full = torch.complex(*(torch.randn(4, 9, 9, generator=generator, dtype=torch.float64) for _ in range(2)))
    layer = SpectralConv(half_spectrum(full))
    model = lowered(torch.nn.Sequential(copy.deepcopy(layer)), choice).eval()
    x = torch.randn(3, 4, 9, 9, generator=generator)
    with torch.no_grad():
        scripted = torch.jit.script(model)(x)
        assert relative_error(scripted, layer(x)) <= 1e-5
    assert "Scan" not in str(torch.jit.script(model).inlined_graph)


def test_tuning_candidates():
    assert candidates("onnx", "matmul", KRONECKER_TUNE_MAX_SIZE) == (*MATMUL_LOWERINGS, *PER_IMAGE_LOWERINGS)
    assert "kronecker" not in candidates("onnx", "matmul", KRONECKER_TUNE_MAX_SIZE + 1)
    assert candidates("torchscript", "matmul", 7) == tuple(MATMUL_LOWERINGS)
    assert candidates("torchscript", "torch", 56) == ("fft", "separable", "paired")
    assert candidates("onnx", "dft", 7) == ("fft",)
