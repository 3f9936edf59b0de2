"""A simulated accelerator for benchmarks/feeding_power.py, injected into the niff-serve processes it starts.

Never part of niff-serve: this folder is put on PYTHONPATH of the benchmark's servers only, and the patch
is active only while ``SIMULATED_DEVICE_TIMING`` is set (not a ``NIFF_*`` name: the supervisor strips those
from its children's environments). ``SIMULATED_DEVICE_TIMING="2+0.005"`` makes every batch cost
2 ms + 0.005 ms per image, spent in ``time.sleep`` (no CPU) while holding an exclusive ``fcntl.flock`` on
the file ``SIMULATED_DEVICE_LOCK``: every process of every server shares that one device, so their
batches run one at a time, as on one GPU. The logits are zeros of the model's shape.

``niff_serve.core.state`` and ``niff_serve.core.runtime`` bind ``load_backend`` by name when they are
imported, so the replacement happens the moment ``niff_serve.core.backends`` is first imported, before
them: an import hook runs the module, then swaps its ``load_backend``. Each load prints one line to stderr
(``simulated device: ...``) so the benchmark can check which processes really use it.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

_TARGET = "niff_serve.core.backends"
_TIMING = os.environ.get("SIMULATED_DEVICE_TIMING")


def _install(module: object) -> None:
    import fcntl
    import time

    import numpy as np

    fixed_ms, per_image_ms = (float(part) for part in _TIMING.split("+"))  # type: ignore[union-attr]
    lock_path = os.environ["SIMULATED_DEVICE_LOCK"]
    backend_base = module.Backend  # type: ignore[attr-defined]

    class SimulatedDevice(backend_base):  # type: ignore[misc,valid-type]
        kind = "simulated"
        device = "simulated"
        platform = "onnxruntime_onnx"

        def __init__(self, classes: int) -> None:
            self._classes = classes
            self._lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)

        def run(self, batch: np.ndarray) -> np.ndarray:
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            try:
                time.sleep((fixed_ms + per_image_ms * len(batch)) / 1000)
            finally:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            return np.zeros((len(batch), self._classes), dtype=np.float32)

    def load_backend(folder, settings, max_batch_size):
        print(
            f"simulated device: pid {os.getpid()} model {folder.name} batches up to {max_batch_size}, "
            f"{fixed_ms:g} ms + {per_image_ms:g} ms per image, lock {lock_path}",
            file=sys.stderr,
            flush=True,
        )
        return SimulatedDevice(folder.num_classes)

    module.load_backend = load_backend  # type: ignore[attr-defined]


class _Patch(importlib.abc.MetaPathFinder):
    """Finds ``niff_serve.core.backends`` as usual, and patches it once it has run."""

    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: object) -> None:
            original(module)
            _install(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if _TIMING:
    sys.meta_path.insert(0, _Patch())
