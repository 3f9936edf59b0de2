"""Layer behaviour the reference gets wrong or leaves implicit: resolution changes, shapes, dtypes."""

from __future__ import annotations

import pytest
import torch

from niff.filters import frequency_grid
from niff.layers import FreqConv1x1, FreqConvDW, FreqConvFull, split_conv


def test_grid_is_the_reference_arange():
    grid = frequency_grid(7, dtype=torch.float32)
    assert grid.shape == (2, 7, 7)
    assert torch.equal(grid[0, 3], torch.arange(-3.5, 3.5))
    assert torch.equal(grid[1, :, 2], torch.arange(-3.5, 3.5))
    assert torch.equal(frequency_grid(8, dtype=torch.float64)[0, 0], torch.arange(-4.0, 4.0, dtype=torch.float64))


@pytest.mark.parametrize(
    "make",
    [lambda: FreqConvDW(4), lambda: FreqConvDW(4, mlp="big"), lambda: split_conv(4, 6), lambda: FreqConvFull(4, 6)],
    ids=["dw", "dw-big", "split", "full"],
)
def test_no_grid_cache_across_resolutions(make):
    torch.manual_seed(0)
    layer = make().eval()
    fresh = make().eval()
    fresh.load_state_dict(layer.state_dict())
    small, large = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 14, 14)
    with torch.no_grad():
        layer(small)
        after_small = layer(large)
        expected = fresh(large)
    assert after_small.shape[-1] == 14
    assert torch.equal(after_small, expected)


@pytest.mark.parametrize("layer", [FreqConvDW(3), split_conv(3, 4), FreqConvFull(3, 4), FreqConv1x1(3, 4)])
def test_non_square_input_is_a_clear_error(layer):
    with pytest.raises(ValueError, match="square"):
        layer(torch.randn(1, 3, 8, 10))


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="expects 3 channels, got 5"):
        FreqConvDW(3)(torch.randn(1, 5, 8, 8))


def test_follows_float64_input():
    layer = split_conv(3, 4).double()
    out = layer(torch.randn(2, 3, 9, 9, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (2, 4, 9, 9)


@pytest.mark.parametrize("size", [1, 2])
def test_tiny_maps(size):
    out = split_conv(3, 4)(torch.randn(2, 3, size, size))
    assert out.shape == (2, 4, size, size) and torch.isfinite(out).all()


def test_layers_are_trainable():
    layer = FreqConvDW(3)
    layer(torch.randn(2, 3, 8, 8)).square().mean().backward()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="transform"):
        FreqConvDW(3, transform="rfft")
    with pytest.raises(ValueError, match="MLP size"):
        FreqConvDW(3, mlp="huge")
    with pytest.raises(ValueError, match="channels-last"):
        FreqConv1x1(3, 4, transform="ifft", channels_last=True)
