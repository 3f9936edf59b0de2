"""NIFF: Neural Implicit Frequency Filter networks, checkpoint-compatible with the paper's code.

Grabinski, Keuper & Keuper, "As large as it gets — Studying Infinitely Large Convolutions via Neural
Implicit Frequency Filters", TMLR 2024.
"""

from niff import models
from niff.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, read_checkpoint
from niff.layers import FreqConv1x1, FreqConvDW, FreqConvFull, split_conv
from niff.registry import ModelSpec, Preprocessing, create_model, get_entry, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "FreqConv1x1",
    "FreqConvDW",
    "FreqConvFull",
    "ModelSpec",
    "Preprocessing",
    "create_model",
    "extract_state_dict",
    "get_entry",
    "list_models",
    "load_checkpoint",
    "models",
    "read_checkpoint",
    "register_model",
    "split_conv",
]
