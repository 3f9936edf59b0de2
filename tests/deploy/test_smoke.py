"""The CPU Deployment's pod, played without a container engine: its init container's command
(niff-export, at a small input size) turns a checkpoint into a model repository; the image's entry
point (the niff-serve console script) serves it with the pod's environment; deploy/smoke.sh checks it
through SMOKE_URL (readiness, one classification, the JSON). Then SIGTERM with a request in flight:
the request is answered, new connections are refused, the process ends within the grace period."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from deploy_support import ROOT, VENV_BIN, env_literals, one, serve_script_name, settings_class, variant_docs

# The image smoke.sh sends by default, read from the script itself.
SMOKE_PNG = re.search(r"<<'PNG'\n(.+?)\nPNG\n", (ROOT / "deploy" / "smoke.sh").read_text(), re.S).group(1)


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
    command = [str(VENV_BIN / serve_script_name(pyproject))]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        model = next(exported_repository.iterdir()).name
        yield process, f"http://127.0.0.1:{port}", deployment, model
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def start_request(url: str, path: str, body: bytes, sent: int) -> socket.socket:
    """A POST whose body is only partly sent: a request in flight."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    connection.sendall(head + body[:sent])
    return connection


def finish_request(connection: socket.socket, rest: bytes) -> tuple[int, bytes]:
    connection.sendall(rest)
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    connection.close()
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


def test_smoke_script_classifies_and_the_server_drains_on_sigterm(server):
    process, url, deployment, model = server
    smoke = subprocess.run(
        ["bash", str(ROOT / "deploy" / "smoke.sh")],
        env={**os.environ, "SMOKE_URL": url, "READY_TIMEOUT": "90"},
        capture_output=True,
        text=True,
        timeout=150,
    )
    if smoke.returncode != 0 and process.poll() is not None:
        pytest.fail(f"niff-serve exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "smoke: passed" in smoke.stderr
    assert "top-1" in smoke.stderr

    # Drain: a request in flight when SIGTERM arrives still gets its answer; new connections are
    # refused; then the process ends by itself within the pod's grace period.
    image = base64.b64decode(SMOKE_PNG)
    in_flight = start_request(url, f"/v1/models/{model}:classify?top_k=2", image, sent=len(image) // 2)
    time.sleep(0.3)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert process.poll() is None, "niff-serve exited with a request still in flight"
    host, port = url.removeprefix("http://").split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass
    status, payload = finish_request(in_flight, image[len(image) // 2 :])
    assert status == 200, payload[:500]
    assert json.loads(payload)["predictions"][0]["top_k"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    code = process.wait(timeout=grace)
    # 0, or killed by the SIGTERM that uvicorn re-raises after its clean shutdown (shell: 143).
    assert code in (0, -signal.SIGTERM), f"exit status {code} after SIGTERM:\n{process.stdout.read()[-3000:]}"
    assert time.monotonic() - started < grace


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
