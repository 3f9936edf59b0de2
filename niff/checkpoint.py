"""Load checkpoints written by the paper's training code (or ours) into our models, safely.

Files load with ``weights_only=True``: tensors and plain containers only, since a pickle can run
arbitrary code. A whole pickled ``nn.Module`` needs ``trust_pickle=True``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from niff.architecture import head_classes, infer_architecture
from niff.registry import ModelEntry, ModelSpec, build_model, get_entry

# Wrapper keys training scripts put around the state_dict, tried in this order.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net")
EMA_KEYS = ("model_ema", "state_dict_ema", "ema")
# Prefixes left by DistributedDataParallel / DataParallel and torch.compile.
STRIP_PREFIXES = ("module.", "_orig_mod.")
# Optional metadata a checkpoint may carry beside its weights: {"preprocessing": {Preprocessing fields},
# "labels": [class names]}. Our digits training script writes it; export and serving then need no flags.
METADATA_KEY = "niff"
# The frequency-filter MLPs' parameter names: every NIFF layer has one of them, other models none.
NIFF_PARAMETERS = ("mlp_real", "mlp_imag", "mlp")
# Harmless types training scripts store beside the weights (the ConvNeXt script saves its argparse args).
SAFE_GLOBALS = [argparse.Namespace]


# How to resolve a CheckpointError that names a ``load_checkpoint`` argument, worded for Python callers.
ADVICE = {
    "arch": "pass arch= one of the zoo's names (niff.list_models())",
    "trust_pickle": "loading them can run code; if you trust the file, pass trust_pickle=True",
    "ema": "leave out ema=True to load its model weights",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the requested architecture.

    ``option`` names the ``load_checkpoint`` argument that would resolve it (a key of ``ADVICE``), so a
    command line can word the advice with its own option names; ``problem`` is the message without it.
    ``not_niff`` says, for weights that hold no NIFF layers, that the file is no NIFF checkpoint at all: the
    better message for a tool that takes NIFF models only (a Python caller may be loading its own model).
    """

    def __init__(self, problem: str, option: str | None = None) -> None:
        super().__init__(f"{problem}; {ADVICE[option]}" if option else problem)
        self.problem = problem
        self.option = option
        self.not_niff: str | None = None


def read_checkpoint(path: str | os.PathLike[str], trust_pickle: bool = False) -> Any:
    """The object stored in a checkpoint file, with errors that say what is wrong with the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"no such checkpoint file: {path}")
    _check_container(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # torch.load raises many types for damaged files; all mean the same to the user
        if isinstance(exc, pickle.UnpicklingError) and not trust_pickle and "GLOBAL" in str(exc):
            raise CheckpointError(
                f"{path} holds pickled Python objects ({_unsupported_global(exc)}), not just tensors",
                option="trust_pickle",
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {_reason(exc)}") from None


def _check_container(path: str) -> None:
    """torch.save writes a zip archive (a pickle stream in its legacy format); anything else is not a checkpoint.

    Checked first because torch.load answers other files with internal errors ("pop from empty list").
    """
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise CheckpointError(f"{path} is empty, not a PyTorch checkpoint")
    is_zip = head == b"PK\x03\x04"
    is_pickle = len(head) >= 2 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL
    if not (is_zip or is_pickle):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive (or a pickle in its legacy "
            "format), and this file is neither"
        )
    if is_zip and _is_torchscript_archive(path):
        raise CheckpointError(f"{path} is an exported TorchScript model, not a training checkpoint")


def _is_torchscript_archive(path: str) -> bool:
    """Whether a zip is a TorchScript archive (torch.jit.save: it has ``constants.pkl``, as torch checks), which
    torch.load would hand to torch.jit.load with a warning, or refuse under weights_only."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False  # torch.load says what is wrong with it


def extract_state_dict(obj: Any, ema: bool = False) -> dict[str, Tensor]:
    """The model weights inside a checkpoint object: unwraps training wrappers and DDP/compile prefixes."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state_dict or a training checkpoint")
    if ema:
        key = next((k for k in EMA_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))), None)
        if key is None:
            raise CheckpointError(f"the checkpoint has no EMA weights (looked for {', '.join(EMA_KEYS)})", option="ema")
        return extract_state_dict(obj[key])
    if not any(isinstance(v, Tensor) for v in obj.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, nn.Module))), None)
        if key is None:
            raise CheckpointError(
                f"checkpoint is a dict without tensors or a known wrapper key ({', '.join(WRAPPER_KEYS)}); "
                f"its keys: {', '.join(map(str, list(obj)[:8]))}"
            )
        return extract_state_dict(obj[key])
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def describe_mismatch(model: nn.Module, state_dict: Mapping[str, Tensor], limit: int = 5) -> str | None:
    """Missing and unexpected keys and shape mismatches (first few of each, with counts), or None if it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} (checkpoint {list(state_dict[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = [
        f"{len(items)} {label}: {', '.join(items[:limit])}{', …' if len(items) > limit else ''}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    return "; ".join(parts) or None


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    ema: bool = False,
) -> nn.Module:
    """A model in eval mode with the checkpoint's weights loaded strictly.

    ``arch`` names a zoo model; without it the architecture is read from the keys. The class count
    comes from the checkpoint's head unless ``num_classes`` is given (then they must agree).
    ``ema=True`` takes the EMA weights a training checkpoint carries. A file that is no checkpoint is named
    as what it is (a folder, an exported TorchScript model); for weights without NIFF layers that do not
    load, the error's ``not_niff`` says so.
    """
    path = os.fspath(path)
    stored = read_checkpoint(path, trust_pickle)
    state_dict = extract_state_dict(stored, ema)
    try:
        model = _fitted_model(path, state_dict, arch, num_classes)
    except CheckpointError as exc:
        if not has_niff_layers(state_dict):
            exc.not_niff = (
                f"{path} holds no NIFF layers (no frequency-filter weights 'mlp_real', 'mlp_imag' or 'mlp'): it is "
                "not a NIFF checkpoint"
            )
        raise
    model.niff_spec = _with_metadata(model.niff_spec, stored)
    return model.eval()


def has_niff_layers(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether the weights hold frequency-filter MLPs, which every NIFF layer has (``NIFF_PARAMETERS``)."""
    return any(part in NIFF_PARAMETERS for key in state_dict for part in key.split("."))


def _fitted_model(path: str, state_dict: Mapping[str, Tensor], arch: str | None, num_classes: int | None) -> nn.Module:
    """The architecture ``state_dict`` is for (``arch``, else read from its keys), its weights loaded strictly."""
    if not state_dict:
        raise CheckpointError(f"{path} holds no tensors")
    head = head_classes(state_dict)
    if num_classes is not None and head is not None and num_classes != head:
        raise CheckpointError(f"num_classes={num_classes} but the checkpoint's classifier head has {head} classes")
    classes = num_classes or head
    if arch is not None:
        entry = _entry(arch)
        model = build_model(entry.builder, entry.arch_kwargs, classes or entry.num_classes, entry.preprocessing)
    else:
        try:
            inferred = infer_architecture(state_dict)
        except ValueError as exc:
            raise CheckpointError(str(exc), option="arch") from None
        model = build_model(inferred.builder, inferred.arch_kwargs, classes or inferred.num_classes)
    problem = describe_mismatch(model, state_dict)
    if problem:
        raise CheckpointError(f"checkpoint does not fit {model.niff_spec.arch or model.niff_spec.builder}: {problem}")
    model.load_state_dict(state_dict, strict=True)
    return model


def _with_metadata(spec: ModelSpec, stored: Any) -> ModelSpec:
    """Apply the preprocessing and labels a checkpoint may carry under ``"niff"`` (see ``METADATA_KEY``)."""
    meta = stored.get(METADATA_KEY) if isinstance(stored, Mapping) else None
    if not isinstance(meta, Mapping):
        return spec
    try:
        given = meta.get("preprocessing", {})
        preprocessing = spec.preprocessing.updated(**given)
        labels = tuple(str(label) for label in meta["labels"]) if "labels" in meta else spec.labels
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's {METADATA_KEY!r} metadata is malformed: {exc}") from None
    if labels is not None and len(labels) != spec.num_classes:
        raise CheckpointError(f"the checkpoint lists {len(labels)} labels for {spec.num_classes} classes")
    return replace(spec, preprocessing=preprocessing, labels=labels, preprocessing_from_checkpoint=tuple(given))


def _entry(arch: str) -> ModelEntry:
    try:
        return get_entry(arch)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _reason(exc: BaseException) -> str:
    """What torch.load found wrong, without its advice (retrying with weights_only=False is unsafe advice)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(exc).__name__


def _unsupported_global(exc: BaseException) -> str:
    """The class or function named in torch's "Unsupported global: GLOBAL x.y.Z ..." error."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else "unsupported globals"
