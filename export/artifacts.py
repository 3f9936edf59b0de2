"""Writing the two model files: ONNX (checked by onnx.checker) and TorchScript."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from niff_contract import INPUT_NAME, OUTPUT_NAME
from niff_export import per_image
from niff_export.errors import ExportError

# The ONNX DFT op exists from opset 20; the matmul lowering only needs long-standing ops.
DEFAULT_OPSET = {"matmul": 18, "dft": 20}


@contextlib.contextmanager
def _quiet():
    """Silence exporter chatter (deprecation notes, tracer warnings, progress prints, and the dynamo
    exporter's log warnings such as "torchvision is not installed. Skipping torchvision::nms", which would
    land in the middle of niff-export's progress line). Errors still raise."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


@dataclass(frozen=True)
class Written:
    """How a model file was written, for its niff.json record."""

    exporter: str
    opset: int | None = None


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, lowering: str, opset: int | None) -> Written:
    """Export with a dynamic batch axis, then run onnx.checker's full check on the file.

    The matmul lowering goes through the TorchScript-based exporter (seconds for a ResNet-50); the
    DFT lowering needs the dynamo exporter, the one that translates torch.fft to ONNX ``DFT``.
    """
    opset = opset or DEFAULT_OPSET[lowering]
    if lowering == "dft" and opset < 20:
        raise ExportError(f"the ONNX DFT op needs opset >= 20, got --opset {opset}")
    try:
        with _quiet(), torch.no_grad():
            if lowering == "matmul":
                per_image_layers = per_image.number(model)
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=False,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=opset,
                    custom_opsets={per_image.DOMAIN: 1} if per_image_layers else None,
                )
                if per_image_layers:
                    onnx.save(per_image.expand(onnx.load(str(path)), per_image_layers, opset), str(path))
                exporter = "torch.onnx (TorchScript-based)"
            else:
                batch = torch.export.Dim("batch", min=1, max=4096)
                program = torch.onnx.export(
                    model,
                    (example,),
                    dynamo=True,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: batch},),
                    opset_version=opset,
                )
                program.save(str(path))
                exporter = "torch.onnx (dynamo)"
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {exc}") from exc
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {exc}") from exc
    return Written(exporter, opset)


def write_torchscript(model: nn.Module, path: Path) -> Written:
    """Script (not trace) the baked model, so any batch size and device work after torch.jit.load."""
    try:
        with _quiet():
            torch.jit.script(model).save(str(path))
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {exc}") from exc
    return Written("torch.jit.script")
