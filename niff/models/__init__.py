"""NIFF architectures, registered in the zoo on import."""

from niff.models.convnext import ConvNeXt
from niff.models.densenet import DenseNet
from niff.models.mobilenet import MobileNetV2
from niff.models.resnet import BasicBlock, Bottleneck, ResNet
from niff.registry import Preprocessing, register_model

_CONVNEXT = Preprocessing(crop_pct=0.875, interpolation="bicubic")

for _depth, _block, _layers, _convs in (
    (18, BasicBlock, (2, 2, 2, 2), ("split", "full")),
    (34, BasicBlock, (3, 4, 6, 3), ("split", "full")),
    (50, Bottleneck, (3, 4, 6, 3), ("split", "full")),
    (101, Bottleneck, (3, 4, 23, 3), ("split",)),
    (152, Bottleneck, (3, 8, 36, 3), ("split",)),
):
    for _conv in _convs:
        register_model(f"resnet{_depth}_{_conv}", ResNet, block=_block, layers=_layers, conv=_conv)

for _conv in ("split", "full"):
    register_model(
        f"densenet121_{_conv}", DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, conv=_conv
    )

register_model("mobilenet_v2", MobileNetV2)
register_model("convnext_tiny", ConvNeXt, preprocessing=_CONVNEXT, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
register_model("convnext_small", ConvNeXt, preprocessing=_CONVNEXT, depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
register_model("convnext_base", ConvNeXt, preprocessing=_CONVNEXT, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))

__all__ = ["BasicBlock", "Bottleneck", "ConvNeXt", "DenseNet", "MobileNetV2", "ResNet"]
