"""Baked and lowered layers against the reference's golden vectors, and the exact algebra behind them."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from reference_vectors import layer_for, relative_error, vectors

from niff.layers import FreqConv1x1, FreqConvDW, split_conv
from niff_export import bake, lower
from niff_export.artifacts import write_onnx
from niff_export.spectral import SpectralConv, SpectralMix, half_spectrum

GOLDEN_LAYERS = [g for g in vectors() if g.is_layer]


def _loaded(golden):
    data = golden.load()
    layer = layer_for(golden.meta)
    layer.load_state_dict(data["state_dict"], strict=True)
    return layer.eval(), data


@pytest.mark.parametrize("lowering", ["torch", "matmul"])
@pytest.mark.parametrize("golden", GOLDEN_LAYERS, ids=lambda g: g.file)
def test_baked_layer_matches_reference(golden, lowering):
    layer, data = _loaded(golden)
    baked = lower(bake(layer, golden.meta["H"], example=data["input"]), lowering)
    assert not any(isinstance(m, (FreqConvDW, FreqConv1x1)) for m in baked.modules())
    with torch.no_grad():
        out = baked(data["input"])
    assert relative_error(out, data["output"]) <= 1e-5


@pytest.mark.parametrize("golden", [g for g in GOLDEN_LAYERS if g.meta["C"] == 16], ids=lambda g: g.file)
def test_onnx_layer_matches_reference(golden, tmp_path):
    layer, data = _loaded(golden)
    baked = lower(bake(layer, golden.meta["H"], example=data["input"]), "matmul")
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
        for lowering in ("torch", "matmul"):
            out = lower(bake(layer, size, example=x), lowering)(x)
            assert relative_error(out, reference) <= 1e-5, lowering


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


def test_matmul_mix_equals_fft_mix():
    generator = torch.Generator().manual_seed(1)
    spectrum = torch.complex(torch.randn(3, 4, 6, 4, generator=generator), torch.randn(3, 4, 6, 4, generator=generator))
    mix = SpectralMix(spectrum.to(torch.complex128), torch.randn(4, generator=generator))
    lowered = lower(torch.nn.Sequential(copy.deepcopy(mix)), "matmul")
    x = torch.randn(2, 3, 6, 6, generator=generator)
    with torch.no_grad():
        np.testing.assert_allclose(lowered(x).numpy(), mix(x).numpy(), rtol=1e-4, atol=1e-5)
