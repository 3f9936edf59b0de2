"""Half-precision artifacts that keep float32 inputs and outputs."""

from __future__ import annotations

from torch import Tensor, nn

from niff_export.spectral import SpectralConv, SpectralMix


class HalfPrecision(nn.Module):
    """Runs the wrapped model in float16 behind a float32 interface, so clients and the service never change.

    FFT-lowered spectral layers keep float32 filters and transforms (CPU FFTs have no float16 kernels
    and cuFFT only powers of two); matmul-lowered ones run in float16 like every other layer.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()
        for module in self.model.modules():
            if isinstance(module, (SpectralConv, SpectralMix)):
                module.float()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.half()).float()


def in_precision(model: nn.Module, fp16: bool) -> nn.Module:
    return HalfPrecision(model) if fp16 else model
