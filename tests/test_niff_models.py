"""The zoo: names, configs, and state_dict keys equal to the reference code's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import niff

REFERENCE_KEYS = json.loads((Path(__file__).parent / "fixtures" / "reference_keys.json").read_text())["models"]

ZOO = [
    "resnet18_split resnet34_split resnet50_split resnet101_split resnet152_split",
    "resnet18_full resnet34_full resnet50_full densenet121_split densenet121_full mobilenet_v2",
    "convnext_tiny convnext_small convnext_base",
]


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return niff.create_model(name, **kwargs)


def test_zoo_names_are_the_contract():
    assert niff.list_models() == sorted(" ".join(ZOO).split())
    assert niff.list_models("convnext*") == ["convnext_base", "convnext_small", "convnext_tiny"]


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_state_dict_keys_equal_the_reference(name):
    ours = {k: list(v.shape) for k, v in _meta(name).state_dict().items()}
    assert ours == REFERENCE_KEYS[name]


@pytest.mark.parametrize("name", niff.list_models())
def test_every_model_carries_its_config(name):
    model = _meta(name, num_classes=7)
    spec = model.niff_spec
    assert spec.arch == name and spec.num_classes == 7
    assert spec.preprocessing.input_size == 224 and spec.preprocessing.resize == 256
    assert len(spec.preprocessing.mean) == 3 and len(spec.preprocessing.std) == 3
    assert niff.get_entry(name).num_classes == 1000


@pytest.mark.parametrize(
    "name", ["resnet18_split", "resnet50_full", "densenet121_split", "mobilenet_v2", "convnext_tiny"]
)
def test_forward_at_small_size(name):
    torch.manual_seed(0)
    model = niff.create_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_small_input_stem_keeps_resolution():
    model = niff.create_model("resnet18_split", num_classes=10, small_input=True).eval()
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    seen = []
    model.layer4.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [4]
    assert model.niff_spec.arch is None


def test_narrow_variants_build_from_reference_kwargs():
    convnext = niff.models.ConvNeXt(num_classes=10, depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])
    densenet = niff.models.DenseNet(num_classes=10, growth_rate=8, block_config=[2, 2, 2, 2], num_init_features=16)
    x = torch.randn(1, 3, 32, 32)
    assert convnext.eval()(x).shape == densenet.eval()(x).shape == (1, 10)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ValueError, match="known models: convnext_base"):
        niff.create_model("resnet999")
