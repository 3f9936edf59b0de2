"""The CPU Deployment's pod, played without a container engine: its init container's command
(niff-export, at a small input size) turns a checkpoint into a model repository; the image's entry
point (the niff-serve console script) serves it with the pod's environment and, as in the serve-onnx
image, without torch or the training code; deploy/smoke.sh checks it through SMOKE_URL (readiness,
one classification, the JSON) and drains it (SIGTERM with a request in flight: the request is
answered, readiness fails, new connections are refused). The process must then end within the grace
period. `make image-test` runs the same script against the real images."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from deploy_support import ROOT, VENV_BIN, env_literals, one, serve_script_name, settings_class, variant_docs

# Runs a console script with torch and the training code (niff, niff_export) not installed, as far as
# the process can tell: the serve-onnx image has neither.
WITHOUT_TORCH = """
import sys
from importlib.metadata import entry_points

HIDDEN = {"torch", "niff", "niff_export"}

class Hidden:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)

sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
name = sys.argv.pop(1)
sys.argv[0] = name
(script,) = entry_points(group="console_scripts", name=name)
sys.exit(script.load()())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def exported_repository(tmp_path_factory, pyproject) -> Path:
    """Run the init container's command on a freshly made checkpoint. Only the paths change, and the
    input size (32 instead of the manifest's, which would take minutes here)."""
    import torch

    import niff

    work = tmp_path_factory.mktemp("export")
    checkpoint, out = work / "model.pt", work / "models"
    torch.save(niff.create_model("resnet18_split", num_classes=10).state_dict(), checkpoint)
    init = one(variant_docs("cpu"), "Deployment").body["spec"]["template"]["spec"]["initContainers"][0]
    args = list(init["args"])
    args[0] = str(checkpoint)
    args[args.index("--size") + 1] = "32"
    args[args.index("--out") + 1] = str(out)
    command = [str(VENV_BIN / init["command"][0]), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    folders = [p for p in out.iterdir() if (p / "niff.json").is_file()]
    assert len(folders) == 1, list(out.iterdir())
    return out


@pytest.fixture
def server(exported_repository, dockerfile, pyproject):
    prefix = settings_class().model_config["env_prefix"]
    deployment = one(variant_docs("cpu"), "Deployment").body
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(prefix)}
    env.update(dockerfile.final.env())  # the image's ENV ...
    env.update(env_literals(container))  # ... overridden by the manifest's
    port = free_port()
    env.update(
        {
            f"{prefix}MODEL_REPOSITORY": str(exported_repository),
            f"{prefix}HOST": "127.0.0.1",  # loopback only on a shared CI machine
            f"{prefix}PORT": str(port),
            f"{prefix}GRPC_PORT": str(free_port()),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    command = [str(VENV_BIN / "python"), "-c", WITHOUT_TORCH, serve_script_name(pyproject)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        model = next(exported_repository.iterdir()).name
        yield process, f"http://127.0.0.1:{port}", deployment, model
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_smoke_script_classifies_and_drains_the_server_without_torch(server):
    process, url, deployment, _ = server
    smoke = subprocess.run(
        ["bash", str(ROOT / "deploy" / "smoke.sh")],
        env={**os.environ, "SMOKE_URL": url, "SMOKE_DRAIN_PID": str(process.pid), "READY_TIMEOUT": "90"},
        capture_output=True,
        text=True,
        timeout=200,
    )
    if smoke.returncode != 0 and process.poll() is not None and process.returncode != -signal.SIGTERM:
        pytest.fail(f"niff-serve exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    for line in ("top-1", "drained: the request in flight was answered after SIGTERM", "smoke: passed"):
        assert line in smoke.stderr, smoke.stderr
    # SIGTERM came before smoke.sh returned: the process ends by itself within the pod's grace period.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    code = process.wait(timeout=grace)
    # 0, or killed by the SIGTERM that uvicorn re-raises after its clean shutdown (shell: 143).
    assert code in (0, -signal.SIGTERM), f"exit status {code} after SIGTERM:\n{process.stdout.read()[-3000:]}"
    log = process.stdout.read()
    assert '"backend": "onnxruntime"' in log, log[-3000:]
    after_sigterm = log.partition('"message": "Shutting down"')[2]
    assert re.search(r'"message": "POST /v1/models/[^"]+:classify 200"', after_sigterm), log[-3000:]


def test_smoke_script_fails_when_the_server_is_not_there():
    """The script must not report success when there is nothing to test."""
    smoke = subprocess.run(
        ["bash", str(ROOT / "deploy" / "smoke.sh")],
        env={**os.environ, "SMOKE_URL": f"http://127.0.0.1:{free_port()}", "READY_TIMEOUT": "3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert smoke.returncode != 0
    assert "FAILED: not ready" in smoke.stderr
