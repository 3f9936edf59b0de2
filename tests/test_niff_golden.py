"""Ground truth: our library reproduces the reference code's outputs on its own golden vectors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference_vectors import FULL_SET_DIR, REFERENCE_DIR, SUBSET_DIR, layer_for, relative_error, vectors

import niff

LAYER_KINDS = {
    "layer_dw_fftifft_small",
    "layer_dw_fftifft_big",
    "layer_split_dwfft_1x1ifft",
    "layer_1x1_fftifft",
    "layer_full_fftifft",
    "layer_1x1_convnext",
}


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
    assert kinds == LAYER_KINDS
    assert {g.meta["H"] for g in vectors() if g.is_layer} == {7, 8, 14}


def test_committed_subset_is_compact_and_covers_every_kind():
    files = list(SUBSET_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) <= 3_000_000
    index = json.loads((SUBSET_DIR / "index.json").read_text())
    assert {f.name for f in files} == {"index.json"} | {entry["file"] for entry in index}
    assert {entry["file"].rsplit("_c", 1)[0] for entry in index if entry["file"].startswith("layer_")} == LAYER_KINDS
    assert {entry["H"] for entry in index if "H" in entry} == {7, 8, 14}


@pytest.mark.skipif(REFERENCE_DIR != FULL_SET_DIR, reason="regenerating the subset needs the full set")
def test_committed_subset_is_what_its_script_makes_from_the_full_set(tmp_path):
    script = Path(__file__).resolve().parents[1] / "tools" / "make_reference_subset.py"
    done = subprocess.run(
        [sys.executable, str(script), str(FULL_SET_DIR), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "index.json").read_text() == (SUBSET_DIR / "index.json").read_text()
    for made in tmp_path.glob("*.pt"):
        ours, committed = (torch.load(d / made.name, weights_only=True) for d in (tmp_path, SUBSET_DIR))
        assert ours.keys() == committed.keys()
        for key in ("input", "output"):
            assert torch.equal(ours[key], committed[key])
        assert all(torch.equal(v, committed["state_dict"][k]) for k, v in ours["state_dict"].items())
