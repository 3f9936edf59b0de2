"""Checkpoint formats the paper's training code and common tooling write, and the errors users see."""

from __future__ import annotations

import argparse

import pytest
import torch
from reference_vectors import REFERENCE_DIR

import niff
from niff import CheckpointError


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return niff.create_model("resnet18_split", num_classes=10).eval()


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _same(a: torch.nn.Module, b: torch.nn.Module, image: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a(image), b(image))


def _perturbed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd, "epoch": 3, "optimizer": {"state": {}}},
        lambda sd: {"state_dict": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": sd, "args": argparse.Namespace(lr=4e-3, model="resnet18")},
    ],
    ids=["plain", "model-wrapper", "state_dict-wrapper", "ddp-prefix", "wrapped-ddp", "convnext-script-args"],
)
def test_formats(wrap, model, image, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(model.state_dict()), path)
    loaded = niff.load_checkpoint(path)
    assert not loaded.training
    assert loaded.niff_spec.arch == "resnet18_split" and loaded.niff_spec.num_classes == 10
    assert _same(model, loaded, image)


def test_ema_weights_when_asked(model, image, tmp_path):
    path = tmp_path / "ckpt.pth"
    ema = _perturbed(model)
    torch.save({"model": model.state_dict(), "model_ema": ema}, path)
    assert _same(model, niff.load_checkpoint(path), image)
    with_ema = niff.load_checkpoint(path, ema=True)
    assert torch.equal(with_ema.state_dict()["fc.bias"], ema["fc.bias"])
    torch.save({"model": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        niff.load_checkpoint(path, ema=True)


def test_pickled_module_needs_trust(model, image, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        niff.load_checkpoint(path)
    assert _same(model, niff.load_checkpoint(path, trust_pickle=True), image)


def test_wrong_arch_names_missing_and_unexpected_keys(model, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        niff.load_checkpoint(path, arch="resnet18_full")
    message = str(err.value)
    assert "does not fit resnet18_full" in message
    assert "missing keys: layer1.0.conv1.mlp_imag.layer_mpl1.weight" in message
    assert "unexpected keys: layer1.0.conv1.0.mlp_imag" in message
    with pytest.raises(CheckpointError, match=r"does not fit resnet34_split: \d+ missing keys"):
        niff.load_checkpoint(path, arch="resnet34_split")


def test_shape_mismatch_is_named(model, tmp_path):
    path = tmp_path / "ckpt.pt"
    state = model.state_dict()
    state["layer1.0.conv1.1.mlp.weight"] = torch.zeros(64, 32)
    torch.save(state, path)
    with pytest.raises(
        CheckpointError, match=r"layer1\.0\.conv1\.1\.mlp\.weight \(checkpoint \[64, 32\], model \[64, 64\]\)"
    ):
        niff.load_checkpoint(path)


def test_unknown_arch_and_class_mismatch(model, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="unknown model 'resnet19'"):
        niff.load_checkpoint(path, arch="resnet19")
    with pytest.raises(CheckpointError, match="num_classes=1000 but the checkpoint's classifier head has 10"):
        niff.load_checkpoint(path, num_classes=1000)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is empty, not a PyTorch checkpoint"),
        (b"hello, this is text\n", "is not a PyTorch checkpoint: torch.save writes a zip archive"),
        (b"PK\x03\x04garbage-zip", "not a readable PyTorch checkpoint"),
    ],
    ids=["empty", "text", "corrupt-zip"],
)
def test_unreadable_files(content, match, tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        niff.load_checkpoint(path)


def test_truncated_checkpoint(model, tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        niff.load_checkpoint(path)


def test_missing_file_and_non_checkpoint_objects(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        niff.load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        niff.load_checkpoint(tmp_path)
    scripted = tmp_path / "model.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    with pytest.raises(CheckpointError, match=r"is an exported TorchScript model, not a training checkpoint$"):
        niff.load_checkpoint(scripted)
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        niff.load_checkpoint(path)
    torch.save({"epoch": 1, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="known wrapper key"):
        niff.load_checkpoint(path)


def test_unrecognised_keys_ask_for_arch(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3), "decoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(CheckpointError, match=r"cannot tell the architecture.*pass arch="):
        niff.load_checkpoint(path)


def test_metadata_sets_preprocessing_and_labels(model, tmp_path):
    path = tmp_path / "meta.pt"
    labels = [f"class {i}" for i in range(10)]
    meta = {
        "preprocessing": {"input_size": 32, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3},
        "labels": labels,
    }
    torch.save({"model": model.state_dict(), "niff": meta}, path)
    spec = niff.load_checkpoint(path).niff_spec
    assert spec.labels == tuple(labels)
    assert spec.preprocessing.input_size == 32 and spec.preprocessing.resize == 32
    assert spec.preprocessing_from_checkpoint == ("input_size", "crop_pct", "mean", "std")
    torch.save({"model": model.state_dict()}, path)
    assert niff.load_checkpoint(path).niff_spec.preprocessing_from_checkpoint == ()
    torch.save({"model": model.state_dict(), "niff": {"labels": ["a", "b"]}}, path)
    with pytest.raises(CheckpointError, match="2 labels for 10 classes"):
        niff.load_checkpoint(path)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet50_split", {"widths": (8, 16, 32, 64), "small_input": True}),
        ("resnet18_full", {"widths": (8, 16, 32, 64)}),
        ("densenet121_full", {"growth_rate": 4, "block_config": (1, 2, 1, 1), "num_init_features": 8, "bn_size": 2}),
        ("mobilenet_v2", {"width_mult": 0.5}),
        ("convnext_tiny", {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32), "layer_scale_init_value": 0.0}),
    ],
)
def test_infers_custom_variants(name, kwargs, tmp_path, image):
    torch.manual_seed(0)
    model = niff.create_model(name, num_classes=3, **kwargs).eval()
    path = tmp_path / "variant.pt"
    torch.save(model.state_dict(), path)
    loaded = niff.load_checkpoint(path)
    assert loaded.niff_spec.builder == type(model).__name__ and loaded.niff_spec.num_classes == 3
    assert _same(model, loaded, image)


def test_reference_model_files_load_by_inference(tmp_path):
    for file in ("convnext_narrow__c10_s32.pt", "densenet_narrow_split__c10_s32.pt"):
        data = torch.load(REFERENCE_DIR / file, weights_only=True)
        path = tmp_path / file
        torch.save({"model": data["state_dict"]}, path)
        spec = niff.load_checkpoint(path).niff_spec
        assert spec.arch is None and spec.num_classes == 10
