"""The README's quick start, run as written: `make serve` (its ports, its suggested curl line), the curl line, and
the tritonclient snippets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from polling import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README, re.S)
    return next(b for b in blocks if containing in b)


@pytest.fixture(scope="module")
def make_serve(tmp_path_factory):
    """`make serve` as the README says, with free ports and a scratch model repository."""
    port, grpc_port, models = free_port(), free_port(), tmp_path_factory.mktemp("models")
    venv = Path(sys.executable).parent.parent
    process = subprocess.Popen(
        ["make", "serve", f"PORT={port}", f"GRPC_PORT={grpc_port}", f"MODELS={models}", f"VENV={venv}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("NIFF_")},
    )

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"make serve exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "make serve was not ready", timeout=300)
        yield port, grpc_port, models
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert "Starting niff-serve on http://127.0.0.1:" in output
    assert (
        f"curl -s --data-binary @examples/digits/digit-7.png http://127.0.0.1:{port}/v1/models/digits:classify"
        in output
    )


def test_curl_line_classifies_the_example(make_serve):
    port, _, _ = make_serve
    line = next(line for line in _block("sh", "curl").splitlines() if line.startswith("curl"))
    done = subprocess.run(
        line.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), shell=True, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    best = json.loads(done.stdout)["predictions"][0]["top_k"][0]
    assert best["label"] == "7" and best["index"] == 7


def _printed(snippet: str) -> list[str]:
    """What a README Python snippet prints, run as a script from the repository root."""
    done = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_plain_python_snippet(make_serve):
    port, _, _ = make_serve
    assert _printed(_block("python", "import httpx").replace("127.0.0.1:8000", f"127.0.0.1:{port}")) == ["7"]


def test_tritonclient_snippet(make_serve):
    port, _, models = make_serve
    snippet = _block("python", "tritonclient").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    snippet = snippet.replace('"models/digits/niff.json"', repr(str(models / "digits" / "niff.json")))
    assert _printed(snippet) == ["[3]", "[3]"]


def test_grpc_snippet(make_serve):
    _, grpc_port, _ = make_serve
    assert _printed(_block("python", "tritonclient.grpc").replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}")) == [
        "[3]"
    ]


def test_second_make_serve_uses_the_cached_export(make_serve):
    _, _, models = make_serve
    venv = Path(sys.executable).parent.parent
    done = subprocess.run(
        ["make", "export", f"MODELS={models}", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert f"Using the cached export in {models}/digits" in done.stdout


def _make_serve_plan(*variables: str) -> list[str]:
    """The lines `make serve` would run and print (make -n), without running them."""
    venv = Path(sys.executable).parent.parent
    command = ["make", "-n", "serve", f"VENV={venv}", "MODELS=/nonexistent/models", *variables]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_readme_says_how_to_change_the_ports():
    [sentence] = re.findall(r"`make serve (PORT=\d+ GRPC_PORT=\d+)`", README)
    variables = sentence.split()
    [serve] = [line for line in _make_serve_plan(*variables) if "niff-serve --model-repository" in line]
    port, grpc_port = (v.split("=")[1] for v in variables)
    assert f"--port {port} --grpc-port {grpc_port}" in serve


def test_make_serve_suggests_the_example_digit_only_for_the_digits_model():
    [digits] = [line for line in _make_serve_plan() if "curl" in line]
    assert "@examples/digits/digit-7.png http://127.0.0.1:8000/v1/models/digits:classify" in digits
    [other] = [line for line in _make_serve_plan("CHECKPOINT=resnet50_split.pth", "SIZE=224") if "curl" in line]
    assert "curl -s --data-binary @YOUR_IMAGE.jpg http://127.0.0.1:8000/v1/models/resnet50_split:classify" in other
