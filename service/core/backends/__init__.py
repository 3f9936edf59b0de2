"""Choosing and loading a runtime per model folder.

The runtime modules are imported only here and only when chosen, so an ONNX-only deployment never
imports torch.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np

from niff_contract import ArtifactKind, ModelFolder, instance_groups
from niff_contract.errors import one_line
from niff_serve.core.backends.base import Backend, BackendKind, DeviceKind
from niff_serve.core.errors import ConfigurationError
from niff_serve.core.settings import Settings

logger = logging.getLogger(__name__)

ARTIFACT_OF: dict[BackendKind, ArtifactKind] = {"onnxruntime": "onnx", "torchscript": "torchscript"}
MAX_MESSAGE = 1000  # a start-up error is one line of at most this many characters

__all__ = ["ARTIFACT_OF", "Backend", "BackendKind", "DeviceKind", "choose_backend", "load_backend", "warm_up"]


def _cuda_available(kind: BackendKind) -> bool:
    if kind == "onnxruntime":
        from niff_serve.core.backends import onnxruntime

        return onnxruntime.cuda_available()
    if importlib.util.find_spec("torch") is None:
        return False
    from niff_serve.core.backends import torchscript

    return torchscript.cuda_available()


def choose_backend(folder: ModelFolder, settings: Settings) -> tuple[BackendKind, DeviceKind]:
    """The runtime and device for one model; explicit settings that cannot be met are errors."""
    where = f"model {folder.name!r}"
    candidates: list[BackendKind] = ["onnxruntime", "torchscript"] if settings.backend == "auto" else [settings.backend]
    present = [kind for kind in candidates if folder.artifact_path(ARTIFACT_OF[kind]) is not None]
    if not present:
        raise ConfigurationError(f"{where}: has no {ARTIFACT_OF[candidates[0]]} artifact for backend {candidates[0]}")
    if "torchscript" in present and importlib.util.find_spec("torch") is None:
        present.remove("torchscript")
        if not present:
            raise ConfigurationError(f"{where}: the TorchScript backend needs torch, which is not installed")
    # config.pbtxt's instance_group may pin the model to a kind of device; else the settings decide.
    wanted = {"cpu": "cpu", "gpu": "cuda"}.get(instance_groups(folder.config)[1], settings.device)
    if wanted != "cpu":
        for kind in present:
            if _cuda_available(kind):
                return kind, "cuda"
        if wanted == "cuda":
            asked = "device cuda asked for" if settings.device == "cuda" else "config.pbtxt asks for KIND_GPU"
            raise ConfigurationError(f"{where}: {asked}, but {' and '.join(present)} cannot reach a GPU")
    return present[0], "cpu"


def load_backend(folder: ModelFolder, settings: Settings, max_batch_size: int) -> Backend:
    """Load the chosen runtime for ``folder`` after checking the artifact's sha256."""
    kind, device = choose_backend(folder, settings)
    path = folder.verify_artifact(ARTIFACT_OF[kind])
    manifest = folder.manifest
    try:
        if kind == "onnxruntime":
            from niff_serve.core.backends.onnxruntime import OnnxRuntimeBackend

            return OnnxRuntimeBackend(
                path,
                device,
                manifest.input.name,
                manifest.output.name,
                settings.backend_threads,
                input_shape=manifest.input.shape,
                output_shape=manifest.output.shape,
            )
        from niff_serve.core.backends.torchscript import TorchScriptBackend

        return TorchScriptBackend(
            path, device, max_batch_size, manifest.input.shape, folder.num_classes, settings.backend_threads
        )
    except ConfigurationError as exc:  # runtimes' messages span lines; start-up errors are one
        raise ConfigurationError(one_line(f"model {folder.name!r}: {exc}", MAX_MESSAGE)) from None


def runtime_message(exc: Exception) -> str:
    """A runtime's error as one line: TorchScript's own traceback reduced to its last line (the error
    itself), ONNX Runtime's lines joined."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback of TorchScript" in str(exc):
        return lines[-1]
    return " ".join(lines) or type(exc).__name__


def warm_up(backend: Backend, folder: ModelFolder, max_batch_size: int, runs: int = 2) -> None:
    """Run the smallest and largest batch so lazy initialisation happens before the model reports ready.

    Also proves the artifact answers with the shape niff.json promises.
    """
    rng = np.random.default_rng(0)
    for size in sorted({1, max_batch_size}):
        batch = rng.standard_normal((size, *folder.manifest.input.shape), dtype=np.float32)
        for _ in range(runs):
            try:
                logits = backend.run(batch)
            except Exception as exc:  # any runtime error here means the artifact cannot serve
                raise ConfigurationError(
                    one_line(
                        f"model {folder.name!r}: warm-up inference failed on a float32 {list(batch.shape)} batch "
                        f"(niff.json's input): {runtime_message(exc)}",
                        MAX_MESSAGE,
                    )
                ) from None
            if logits.shape != (size, folder.num_classes) or logits.dtype != np.float32:
                raise ConfigurationError(
                    f"model {folder.name!r}: the artifact returns {logits.dtype} {list(logits.shape)}, "
                    f"expected float32 {[size, folder.num_classes]}"
                )
    logger.info("model warmed up", extra={"model": folder.name, "backend": backend.kind, "device": backend.device})
