"""The kernel measures behind niff-report and compact export, against an independent transcription and the
golden vectors of the paper's code (kernels recovered from the reference's own inputs and outputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_reference import impulse_kernels, shares, spectral_error, window_sides
from reference_vectors import layer_for, vectors

from niff.layers import FreqConvDW, FreqConvFull, split_conv
from niff_export.kernels import THRESHOLDS, find_filter_layers, measure

TOLERANCE = 1e-4


def _layer(kind: str, channels: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "depthwise":
        return FreqConvDW(channels)
    if kind == "big":
        return FreqConvDW(channels, mlp="big")
    if kind == "split":
        return split_conv(channels, channels + 2)
    return FreqConvFull(channels, channels + 1)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 14])
@pytest.mark.parametrize("kind", ["depthwise", "big", "split", "full"])
def test_measures_match_the_independent_transcription(kind, n):
    layer = _layer(kind, 5, seed=n)
    (found,) = find_filter_layers(layer, n, torch.randn(1, 5, n, n))
    eager = layer[0] if kind == "split" else layer
    reference = impulse_kernels(eager, n)
    assert np.abs(found.kernels().reshape(-1, n, n).numpy() - reference).max() <= 1e-10

    stats = measure(found)
    assert list(stats.kernel_sizes) == window_sides(n)
    mass, energy = shares(reference), shares(reference, power=2)
    np.testing.assert_allclose(stats.mass.numpy(), mass, atol=TOLERANCE)
    np.testing.assert_allclose(stats.mass_ratio, mass.mean(0), atol=TOLERANCE)
    np.testing.assert_allclose(stats.mass_ratio_std, mass.std(0), atol=TOLERANCE)
    np.testing.assert_allclose(stats.energy_ratio, energy.mean(0), atol=TOLERANCE)
    full_shape = (5, 6) if kind == "full" else None
    expected = [spectral_error(reference, k, full_shape) for k in window_sides(n)]
    np.testing.assert_allclose(stats.spectral_error, expected, atol=TOLERANCE)
    for share in THRESHOLDS:
        k = stats.effective_kernel(share)
        assert mass.mean(0)[(k - 1) // 2] >= share - 1e-12
        assert k == 1 or mass.mean(0)[(k - 3) // 2] < share
    record = stats.to_dict()
    assert record["kind"] == ("full" if kind == "full" else "depthwise") and record["map_size"] == n
    assert record["effective_kernel"].keys() == {"0.9", "0.95", "0.99"}


def test_lone_tap_kernels_and_whole_windows():
    """A filter that is constant over frequencies is a single tap: every window holds all of it, error 0."""
    layer = FreqConvDW(4)
    with torch.no_grad():
        for mlp in (layer.mlp_real, layer.mlp_imag):
            last = list(mlp.children())[-1]
            last.weight.zero_()
            last.bias.fill_(1.0 if mlp is layer.mlp_real else 0.0)
    (found,) = find_filter_layers(layer, 8, torch.randn(1, 4, 8, 8))
    stats = measure(found)
    assert stats.mass_ratio == pytest.approx([1.0] * 5) and stats.spectral_error[0] == pytest.approx(0.0)
    assert stats.effective_kernel(0.99) == 1


# --- golden vectors: kernels recovered from the reference code's inputs and outputs --------------------


def _deconvolved(data: dict, kind: str) -> np.ndarray:
    """Per-kernel spatial kernels from golden input/output alone (no MLP, no knowledge of the shifts).

    Depthwise: Y = H·X per channel and frequency, least squares over the batch. Full (3 input channels,
    batch 3): Y[b, :] = X[b, :] @ H per frequency, solved exactly. Split (depthwise then a real 1x1 mix W):
    per frequency Y = X @ A with A[c, o] = H_c·W[o, c]; column o of A is channel c's kernel up to the
    scale W[o, c], and mass ratios do not see scale.
    """
    x = np.fft.fft2(data["input"].double().numpy())
    y = np.fft.fft2(data["output"].double().numpy())
    if kind == "depthwise":
        h = (np.conj(x) * y).sum(0) / (np.abs(x) ** 2).sum(0)
        return np.fft.ifft2(h).real
    xs, ys = np.moveaxis(x, (0, 1), (-2, -1)), np.moveaxis(y, (0, 1), (-2, -1))
    mix = np.linalg.solve(xs, ys)  # [n, n, C_in, C_out]
    kernels = np.fft.ifft2(np.moveaxis(mix, (-2, -1), (0, 1))).real  # [C_in, C_out, n, n]
    if kind == "full":
        return kernels.reshape(-1, *kernels.shape[-2:])
    strongest = (kernels**2).sum(axis=(-2, -1)).argmax(1)
    return kernels[np.arange(kernels.shape[0]), strongest]


GOLDEN = [
    g
    for g in vectors()
    if g.file.startswith("layer_dw_fftifft") or (g.file.startswith(("layer_full", "layer_split")) and g.meta["C"] == 3)
]


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda g: g.file)
def test_mass_ratios_match_kernels_recovered_from_golden_vectors(golden):
    data = golden.load()
    kind = "depthwise" if "_dw_" in golden.file else "full" if "_full_" in golden.file else "split"
    layer = layer_for(golden.meta)
    layer.load_state_dict(data["state_dict"], strict=True)
    n = golden.meta["H"]
    (found,) = find_filter_layers(layer, n, data["input"])
    stats = measure(found)
    recovered = _deconvolved(data, kind)
    np.testing.assert_allclose(stats.mass.numpy(), shares(recovered), atol=TOLERANCE)
    np.testing.assert_allclose(stats.energy.numpy(), shares(recovered, power=2), atol=TOLERANCE)
    if kind != "split":  # the split layer's recovered kernels carry the unknown 1x1 scale per channel
        full_shape = (3, golden.meta["O"]) if kind == "full" else None
        expected = [spectral_error(recovered, k, full_shape) for k in stats.kernel_sizes]
        np.testing.assert_allclose(stats.spectral_error, expected, atol=TOLERANCE)


def test_golden_selection_covers_every_filter_kind():
    assert {g.file.split("_c")[0] for g in GOLDEN} == {
        "layer_dw_fftifft_small",
        "layer_dw_fftifft_big",
        "layer_full_fftifft",
        "layer_split_dwfft_1x1ifft",
    }
