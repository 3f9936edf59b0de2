"""Ground truth: our library reproduces the reference code's outputs on its own golden vectors."""

from __future__ import annotations

import pytest
import torch
from reference_vectors import MISSING_REASON, available, layer_for, relative_error, vectors

import niff

pytestmark = pytest.mark.skipif(not available(), reason=MISSING_REASON)


@pytest.mark.parametrize("golden", [g for g in vectors() if g.is_layer], ids=lambda g: g.file)
def test_layer_matches_reference(golden):
    data = golden.load()
    layer = layer_for(golden.meta)
    layer.load_state_dict(data["state_dict"], strict=True)
    with torch.no_grad():
        out = layer.eval()(data["input"])
    assert out.shape == data["output"].shape
    assert relative_error(out, data["output"]) <= 1e-5


@pytest.mark.parametrize("golden", [g for g in vectors() if not g.is_layer], ids=lambda g: g.file)
def test_model_matches_reference(golden, tmp_path):
    data = golden.load()
    path = tmp_path / "ckpt.pt"
    torch.save(data["state_dict"], path)
    model = niff.load_checkpoint(path)
    if golden.meta["arch"] in niff.list_models():
        assert model.niff_spec.arch == golden.meta["arch"]
        strict = niff.load_checkpoint(path, arch=golden.meta["arch"])
        assert strict.state_dict().keys() == data["state_dict"].keys()
    with torch.no_grad():
        out = model(data["input"])
    assert relative_error(out, data["output"]) <= 1e-5
    assert torch.equal(out.argmax(1), data["output"].argmax(1))


def test_index_covers_every_layer_kind_and_size():
    kinds = {g.file.rsplit("_c", 1)[0] for g in vectors() if g.is_layer}
    assert kinds == {
        "layer_dw_fftifft_small",
        "layer_dw_fftifft_big",
        "layer_split_dwfft_1x1ifft",
        "layer_1x1_fftifft",
        "layer_full_fftifft",
        "layer_1x1_convnext",
    }
    assert {g.meta["H"] for g in vectors() if g.is_layer} == {7, 8, 14}
