"""Real Triton for tests/service/test_transformer_triton.py: run with the Triton venv's python, never imported.

PyTriton (nvidia-pytriton) caps numpy below 2, so it lives in its own virtual environment, ``build/triton-venv``
(``make triton-venv``; why: tests/service/triton-requirements.txt), and the test, in the project's environment,
runs this script there and talks to its Triton only over the network.

``probe``: prints one JSON line, ``{"runs": true}`` where the bundled ``tritonserver`` and this Python's backend
stub start on this machine, else ``{"runs": false, "reason": "<what the loader said>"}``.

``serve``: PyTriton's bundled ``tritonserver`` on the given ports (127.0.0.1) with each ``--model NAME ONNX
SIZE CLASSES`` bound to an ONNX Runtime session on that file (FP32 ``input`` of shape (3, SIZE, SIZE) and
``logits`` of shape (CLASSES,) per item, dynamic batching up to ``--max-batch-size``); prints one JSON line,
``{"ready": true, "access_token": ...}``, once every model is ready, and stops Triton (and its backend stubs) on
SIGTERM or SIGINT, or when its stdin closes (the test that started it is gone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _interpreter_libdir() -> str | None:
    """This interpreter's libpython folder, when it is a shared build.

    The Python backend's stub links ``libpython3.X.so.1.0`` by name: without this folder first on
    LD_LIBRARY_PATH it may load the system's libpython of the same minor version (another patch release)
    under this interpreter's standard library, which fails at model load (pyenv's 3.11.7 stdlib over
    Debian's 3.11.2 libpython: ``'_thread.RLock' object has no attribute '_recursion_count'``).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    return libdir if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir else None


def _library_path() -> str:
    from pytriton.utils.distribution import get_libs_path

    parts = [_interpreter_libdir(), str(get_libs_path()), os.environ.get("LD_LIBRARY_PATH")]
    return ":".join(part for part in parts if part)


def why_triton_cannot_run() -> str | None:
    """None when the bundled ``tritonserver`` and this Python's backend stub start here; else what they said.

    Each is run without a real job: tritonserver prints its usage, the stub that it lacks its arguments;
    anything else (the dynamic loader's "GLIBC_2.35 not found", "error while loading shared libraries")
    means the binary cannot run on this machine.
    """
    from pytriton.utils.distribution import get_root_module_path, get_stub_path

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    binaries = {
        get_root_module_path() / "tritonserver" / "bin" / "tritonserver": ("--help", "Usage: tritonserver"),
        get_stub_path(version): (None, "Expected 9 arguments"),
    }
    env = {**os.environ, "LD_LIBRARY_PATH": _library_path()}
    for binary, (argument, expected) in binaries.items():
        if not binary.exists():
            return f"{binary} is not there (no backend stub for Python {version}?)"
        try:
            run = subprocess.run(
                [str(binary), *([argument] if argument else [])], env=env, capture_output=True, text=True, timeout=60
            )
        except OSError as error:
            return f"{binary.name} cannot be started: {error}"
        said = run.stdout + run.stderr
        if expected not in said:
            return f"{binary.name} cannot run here (exit {run.returncode}): {said.strip()[-2000:]}"
    return None


def _infer_with(onnx_file: str) -> Callable[..., dict[str, np.ndarray]]:
    import onnxruntime as ort
    from pytriton.decorators import batch

    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": session.run(["logits"], {"input": inputs["input"]})[0]}

    return infer


def serve(args: argparse.Namespace) -> int:
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def watch_stdin() -> None:
        # The file descriptor, not sys.stdin: a daemon thread blocked in a buffered reader aborts the
        # interpreter's shutdown ("could not acquire lock for <_io.BufferedReader name='<stdin>'>").
        while os.read(0, 4096):
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_metrics=False,
        exit_timeout_secs=5,
        log_file=args.log_file,
    )
    # Read when tritonserver starts, inherited by the backend stubs it starts.
    os.environ["LD_LIBRARY_PATH"] = _library_path()
    server = Triton(config=config, workspace=args.workspace)
    ready = threading.Event()

    def fail_fast_at_startup() -> None:
        """Exit at once when tritonserver dies before it is ready (a port taken, a model that does not load):
        PyTriton would wait for its readiness for 120 s. (No public way to ask whether it has started:
        PyTriton's TritonServer on ``_triton_server``, its ``sh`` command on ``_tritonserver_running_cmd``.)"""
        while not ready.wait(timeout=0.1):
            process = getattr(server, "_triton_server", None)
            started = getattr(process, "_tritonserver_running_cmd", None) is not None
            if started and not process.is_alive() and not ready.is_set():
                print("triton_predictor: tritonserver exited while starting", file=sys.stderr, flush=True)
                os._exit(1)

    threading.Thread(target=fail_fast_at_startup, daemon=True).start()
    try:
        server.run()
        for name, onnx_file, size, classes in args.model:
            server.bind(
                model_name=name,
                infer_func=_infer_with(onnx_file),
                inputs=[Tensor(name="input", dtype=np.float32, shape=(3, int(size), int(size)))],
                outputs=[Tensor(name="logits", dtype=np.float32, shape=(int(classes),))],
                config=ModelConfig(max_batch_size=args.max_batch_size, batching=True),
                strict=True,
            )
        ready.set()
        print(json.dumps({"ready": True, "access_token": server.get_access_token()}), flush=True)
        while not stop.wait(timeout=1):
            if not server.is_alive():
                print("triton_predictor: Triton or a model's proxy died", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("probe", help="whether the bundled tritonserver and backend stub run here (one JSON line)")
    run = commands.add_parser("serve", help="serve the models until SIGTERM")
    for option in ("--http-port", "--grpc-port", "--metrics-port", "--max-batch-size"):
        run.add_argument(option, type=int, required=True)
    run.add_argument("--workspace", type=Path, required=True, help="a folder for PyTriton's sockets and models")
    run.add_argument("--log-file", type=Path, required=True, help="where tritonserver writes its log")
    run.add_argument("--model", nargs=4, action="append", required=True, metavar=("NAME", "ONNX", "SIZE", "CLASSES"))
    args = parser.parse_args()
    if args.command == "probe":
        reason = why_triton_cannot_run()
        print(json.dumps({"runs": reason is None, **({"reason": reason} if reason else {})}), flush=True)
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
