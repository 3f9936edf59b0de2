"""Export NIFF models: bake the filters at one size, simplify exactly, lower the transforms, write ONNX and
TorchScript into a model-repository folder, and prove parity with eager PyTorch first."""

from niff_export.api import FORMATS, ExportOptions, ExportResult, export_checkpoint, export_model, lowering_for
from niff_export.bake import bake
from niff_export.compact import CompactRequest
from niff_export.errors import ExportError
from niff_export.lowering import LOWERINGS, lower

__all__ = [
    "FORMATS",
    "LOWERINGS",
    "CompactRequest",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "bake",
    "export_checkpoint",
    "export_model",
    "lower",
    "lowering_for",
]
