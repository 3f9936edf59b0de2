"""Which architecture a state_dict describes, read from its key names and tensor shapes alone.

Each family has a reader that recognises its keys and recovers the constructor arguments (stage
depths, widths, split/full variant, class count), so narrow and custom variants load as well as the
zoo's own; ``find_entry`` then names the zoo model when the arguments match one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from niff.models import BasicBlock, Bottleneck, ConvNeXt, DenseNet, MobileNetV2, ResNet
from niff.models.mobilenet import DEFAULT_SETTING, _make_divisible

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class Inferred:
    builder: type[nn.Module]
    arch_kwargs: dict[str, Any]
    num_classes: int


def _count(state_dict: StateDict, pattern: str) -> int:
    """Number of distinct integers captured by ``pattern``'s group across the keys."""
    regex = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := regex.match(k))})


def _read_resnet(sd: StateDict) -> Inferred | None:
    if not {"conv1.weight", "fc.weight"} <= sd.keys() or not any(k.startswith("layer1.0.") for k in sd):
        return None
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in sd)
    expansion = Bottleneck.expansion if bottleneck else BasicBlock.expansion
    last_norm = "bn3" if bottleneck else "bn2"
    widths = tuple(sd[f"layer{s}.0.{last_norm}.weight"].shape[0] // expansion for s in range(1, 5))
    kwargs: dict[str, Any] = {
        "block": Bottleneck if bottleneck else BasicBlock,
        "layers": tuple(_count(sd, rf"layer{s}\.(\d+)\.") for s in range(1, 5)),
        "conv": "split" if any(re.search(r"\.conv[12]\.0\.mlp_real\.", k) for k in sd) else "full",
    }
    if bottleneck:
        strided = sd.get("layer2.0.conv2.weight")
        groups = strided.shape[0] // strided.shape[1] if strided is not None else 1
        width_per_group = sd["layer1.0.bn1.weight"].shape[0] // groups * 64 // widths[0]
        if groups != 1:
            kwargs["groups"] = groups
        if width_per_group != 64:
            kwargs["width_per_group"] = width_per_group
    dilate = [f"layer{s}.0.downsample.0.mlp.weight" in sd for s in (2, 3, 4)]
    if any(dilate):
        kwargs["replace_stride_with_dilation"] = dilate
    if sd["conv1.weight"].shape[-1] == 3:
        kwargs["small_input"] = True
    if widths != (64, 128, 256, 512):
        kwargs["widths"] = widths
    return Inferred(ResNet, kwargs, sd["fc.weight"].shape[0])


def _read_densenet(sd: StateDict) -> Inferred | None:
    if "features.conv0.weight" not in sd or "features.denseblock1.denselayer1.norm1.weight" not in sd:
        return None
    layer = "features.denseblock1.denselayer1."
    width = sd[layer + "norm2.weight"].shape[0]
    split = layer + "conv2.1.mlp.weight" in sd
    growth = (
        sd[layer + "conv2.1.mlp.weight"].shape[0]
        if split
        else sd[layer + "conv2.mlp_real.layer_mpl2.weight"].shape[0] // width
    )
    kwargs = {
        "growth_rate": growth,
        "block_config": tuple(
            _count(sd, rf"features\.denseblock{b}\.denselayer(\d+)\.")
            for b in range(1, 1 + _count(sd, r"features\.denseblock(\d+)\."))
        ),
        "num_init_features": sd["features.conv0.weight"].shape[0],
        "conv": "split" if split else "full",
    }
    if width // growth != 4:
        kwargs["bn_size"] = width // growth
    return Inferred(DenseNet, kwargs, sd["classifier.weight"].shape[0])


def _mobilenet_widths(width_mult: float) -> list[int]:
    """Stem, per-block and last widths MobileNetV2 builds for a width multiplier (default setting)."""
    blocks = [_make_divisible(c * width_mult, 8) for _, c, n, _ in DEFAULT_SETTING for _ in range(n)]
    return [_make_divisible(32 * width_mult, 8), *blocks, _make_divisible(1280 * max(1.0, width_mult), 8)]


def _read_mobilenet(sd: StateDict) -> Inferred | None:
    if "features.0.0.weight" not in sd or "classifier.1.weight" not in sd:
        return None
    block_widths = []
    for block in range(1, _count(sd, r"features\.(\d+)\.conv\.") + 1):
        norms = [k for k in sd if re.fullmatch(rf"features\.{block}\.conv\.\d+\.running_mean", k)]
        block_widths.append(sd[max(norms, key=lambda k: int(k.split(".")[3]))].shape[0])
    found = [sd["features.0.0.weight"].shape[0], *block_widths, sd["classifier.1.weight"].shape[1]]
    kwargs: dict[str, Any] = {}
    if found != _mobilenet_widths(1.0):
        # The first multiplier on a 0.05 grid that builds these widths; any that does builds the same model.
        width_mult = next((w / 100 for w in range(5, 401, 5) if _mobilenet_widths(w / 100) == found), None)
        if width_mult is None:
            return None
        kwargs["width_mult"] = width_mult
    return Inferred(MobileNetV2, kwargs, sd["classifier.1.weight"].shape[0])


def _read_convnext(sd: StateDict) -> Inferred | None:
    if "downsample_layers.0.0.weight" not in sd or "head.weight" not in sd:
        return None
    stem = sd["downsample_layers.0.0.weight"]
    kwargs: dict[str, Any] = {
        "depths": tuple(_count(sd, rf"stages\.{s}\.(\d+)\.") for s in range(4)),
        "dims": (stem.shape[0], *(sd[f"downsample_layers.{i}.1.weight"].shape[0] for i in (1, 2, 3))),
    }
    if stem.shape[1] != 3:
        kwargs["in_chans"] = stem.shape[1]
    if not any(k.endswith(".gamma") for k in sd):
        kwargs["layer_scale_init_value"] = 0.0
    return Inferred(ConvNeXt, kwargs, sd["head.weight"].shape[0])


READERS: dict[str, Callable[[StateDict], Inferred | None]] = {
    "resnet": _read_resnet,
    "densenet": _read_densenet,
    "mobilenet_v2": _read_mobilenet,
    "convnext": _read_convnext,
}


def infer_architecture(state_dict: StateDict) -> Inferred:
    """The one architecture family whose keys the state_dict carries; ValueError when none or several do."""
    found = {name: result for name, read in READERS.items() if (result := read(state_dict)) is not None}
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise ValueError(
            f"cannot tell the architecture from the checkpoint's keys (first keys: {', '.join(list(state_dict)[:5])})"
        )
    raise ValueError(f"the checkpoint's keys fit several architecture families ({', '.join(found)})")


def head_classes(state_dict: StateDict) -> int | None:
    """Class count read from whichever classifier head the state_dict has."""
    for key in ("fc.weight", "classifier.weight", "classifier.1.weight", "head.weight"):
        if key in state_dict:
            return int(state_dict[key].shape[0])
    return None
