"""Our layers against an independent float64 NumPy transcription of the reference's formulas.

The transcription spells out what the reference's all-axis fftshift does: channel ``c`` is filtered
with MLP output ``(c + C//2) % C``, and a split or full layer's output channel ``o`` takes the mixing
row ``(o + O//2) % O``. Sizes beyond the golden vectors' (28, 56) and batch sizes 1, 2, 3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from niff.filters import FilterMLP
from niff.layers import FreqConv1x1, FreqConvDW, FreqConvFull, split_conv


def _mlp(mlp: FilterMLP, size: int) -> np.ndarray:
    """The MLP on the reference grid, evaluated in float64 NumPy: [P, size, size]."""
    coords = np.arange(size, dtype=np.float64) - size / 2
    x = np.stack([np.broadcast_to(coords[None, :], (size, size)), np.broadcast_to(coords[:, None], (size, size))])
    layers = list(mlp.children())
    for index, layer in enumerate(layers):
        w = layer.weight.detach().double().numpy()[:, :, 0, 0]
        b = layer.bias.detach().double().numpy()
        x = np.einsum("oi,ihw->ohw", w, x) + b[:, None, None]
        if index < len(layers) - 1:
            x = x / (1 + np.exp(-x))
    return x


def _filters(layer, size: int) -> np.ndarray:
    return _mlp(layer.mlp_real, size) + 1j * _mlp(layer.mlp_imag, size)


def _shifted_product(filt: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Re ifft2(ifftshift(filt * fftshift(fft2(x)))) over the two spatial axes only."""
    spectrum = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))
    return np.fft.ifftshift(filt * spectrum, axes=(-2, -1))


def _depthwise(layer: FreqConvDW, x: np.ndarray) -> np.ndarray:
    c, size = x.shape[1], x.shape[-1]
    filt = _filters(layer, size)
    out = np.empty_like(x)
    for ch in range(c):
        out[:, ch] = np.fft.ifft2(_shifted_product(filt[(ch + c // 2) % c], x[:, ch])).real
    return out


def _split(dw: FreqConvDW, pw: FreqConv1x1, x: np.ndarray) -> np.ndarray:
    c, size = x.shape[1], x.shape[-1]
    m = pw.mlp.weight.detach().double().numpy()
    o = m.shape[0]
    filt = _filters(dw, size)
    filtered = [_shifted_product(filt[(ch + c // 2) % c], x[:, ch]) for ch in range(c)]
    out = np.zeros((x.shape[0], o, size, size))
    for oc in range(o):
        mixed = sum(m[(oc + o // 2) % o, (ch + c // 2) % c] * filtered[ch] for ch in range(c))
        out[:, oc] = np.fft.ifft2(mixed).real
    return out


def _full(layer: FreqConvFull, x: np.ndarray) -> np.ndarray:
    c, o, size = layer.in_planes, layer.out_planes, x.shape[-1]
    filt = _filters(layer, size).reshape(c, o, size, size)
    out = np.zeros((x.shape[0], o, size, size))
    for oc in range(o):
        mixed = sum(_shifted_product(filt[(ch + c // 2) % c, (oc + o // 2) % o], x[:, ch]) for ch in range(c))
        out[:, oc] = np.fft.ifft2(mixed).real
    return out


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return module.eval()


def _compare(module: torch.nn.Module, expected_fn, batch: int, channels: int, size: int, channels_last=False) -> None:
    shape = (batch, size, size, channels) if channels_last else (batch, channels, size, size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(batch * 1000 + size))
    with torch.no_grad():
        ours = module(x).double().numpy()
    expected = expected_fn(x.double().numpy())
    assert ours.shape == expected.shape
    assert np.linalg.norm(ours - expected) / np.linalg.norm(expected) <= 1e-5


SIZES = [28, 56]
BATCHES = [1, 2, 3]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("mlp", ["small", "big"])
def test_depthwise(mlp, batch, size):
    layer = _randomize(FreqConvDW(5, mlp=mlp), seed=1)
    _compare(layer, lambda x: _depthwise(layer, x), batch, 5, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch", BATCHES)
def test_split(batch, size):
    layer = _randomize(split_conv(5, 6), seed=2)
    _compare(layer, lambda x: _split(layer[0], layer[1], x), batch, 5, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch", BATCHES)
def test_full(batch, size):
    layer = _randomize(FreqConvFull(3, 4), seed=3)
    _compare(layer, lambda x: _full(layer, x), batch, 3, size)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_is_a_linear_map(channels_last, batch, size):
    layer = _randomize(FreqConv1x1(5, 7, channels_last=channels_last), seed=4)
    m = layer.mlp.weight.detach().double().numpy()
    expected = (
        (lambda x: np.einsum("nhwc,oc->nhwo", x, m)) if channels_last else (lambda x: np.einsum("nchw,oc->nohw", x, m))
    )
    _compare(layer, expected, batch, 5, size, channels_last)


def test_channel_roll_matters():
    """Guard the transcription itself: ignoring the channel roll must be visibly wrong."""
    layer = _randomize(FreqConvDW(4), seed=5)
    x = np.random.default_rng(0).standard_normal((2, 4, 28, 28))
    filt = _filters(layer, 28)
    unrolled = np.stack([np.fft.ifft2(_shifted_product(filt[ch], x[:, ch])).real for ch in range(4)], 1)
    rolled = _depthwise(layer, x)
    assert np.linalg.norm(unrolled - rolled) / np.linalg.norm(rolled) > 0.1
