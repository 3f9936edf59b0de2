"""Every command block of README.md and docs/*.md is run, here or by a named test, or said not runnable and why
(tests/docs_commands.py). The runnable ones run as a user would run them: in a scratch working directory that
holds the repository's niff/ and examples/, with the venv's bin first on PATH, servers on free ports."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from docs_commands import CLASSIFIED, ROOT, Block, Run, RunElsewhere, blocks
from PIL import Image
from polling import free_port, wait_until

VENV_BIN = Path(sys.executable).parent
TIMEOUT = 120  # seconds, for any one documented command
KEY = "s3cret"  # the API key docs/service.md uses


def _entry(block: Block) -> str:
    return f'    "{block.key}": ...,  # line {block.line}: {block.first_line}'


def test_every_block_is_classified():
    missing = [_entry(b) for b in blocks() if b.key not in CLASSIFIED]
    assert not missing, "classify these blocks in tests/docs_commands.py:\n" + "\n".join(missing)


def test_every_classification_names_a_block():
    stale = sorted(CLASSIFIED.keys() - {b.key for b in blocks()})
    assert not stale, f"blocks edited or gone, remove or re-key these in tests/docs_commands.py: {stale}"


def _test_names(path: Path) -> set[str]:
    return {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}


def test_the_tests_named_exist():
    here = _test_names(Path(__file__))
    for key, how in CLASSIFIED.items():
        if isinstance(how, Run):
            assert how.test in here, f"{key}: no {how.test} in {Path(__file__).name}"
        elif isinstance(how, RunElsewhere):
            for test in how.tests:
                path, name = test.split("::")
                assert name in _test_names(ROOT / path), f"{key}: no {test}"


def _blocks_run_by(test: str, count: int) -> list[Block]:
    """The blocks classified as run by ``test`` (there must be ``count``), in document order."""
    found = [b for b in blocks() if (how := CLASSIFIED.get(b.key)) and isinstance(how, Run) and how.test == test]
    assert len(found) == count, f"{test} runs {count} blocks, {len(found)} are classified so"
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A user's working directory: the repository's niff/ (the shipped checkpoint) and examples/ in it."""
    for name in ("niff", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIFF_")}
    return {**env, "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}", **extra}


def run(text: str, cwd: Path, language: str = "sh", **env: str) -> str:
    """Run a shell script or a Python program as a user would; its stdout. It must succeed."""
    command = [sys.executable, "-c", text] if language == "python" else ["sh", "-ec", text]
    done = subprocess.run(
        command, cwd=cwd, env=_environment(**env), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{text}\nexited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def json_values(text: str) -> list:
    """The JSON documents printed one after the other (curl prints no newline after each)."""
    decoder, values, rest = json.JSONDecoder(), [], text.strip()
    while rest:
        value, end = decoder.raw_decode(rest)
        values.append(value)
        rest = rest[end:].lstrip()
    return values


def commands(block: Block) -> list[str]:
    """A simple sh block's commands: continuation lines joined, comments dropped, `# or: X` alternatives kept."""
    found = []
    for line in block.text.replace("\\\n", " ").splitlines():
        command, _, comment = line.partition(" #")
        alternative = comment.strip().removeprefix("or:") if comment.strip().startswith("or:") else ""
        found += [c.strip() for c in (command, alternative) if c.strip() and not c.strip().startswith("#")]
    return found


def on_ports(text: str, port: int, grpc_port: int) -> str:
    """Documented client code, pointed at the ports a test's server listens on."""
    text = re.sub(r"(localhost|127\.0\.0\.1):8000\b", rf"\g<1>:{port}", text)
    return re.sub(r"(localhost|127\.0\.0\.1):8001\b", rf"\g<1>:{grpc_port}", text)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def serving(command: str, cwd: Path) -> Iterator[tuple[str, int]]:
    """A documented niff-serve command, on free ports, until the block ends: its HTTP URL and its gRPC port."""
    port, grpc_port = free_port(), free_port()
    log = cwd / f"serve-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            f"{command} --port {port} --grpc-port {grpc_port}",
            shell=True,
            cwd=cwd,
            env=_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _ready(url), f"{command}: not ready", timeout=TIMEOUT)
        assert process.poll() is None, f"{command} exited with {process.returncode}:\n{log.read_text()}"
        yield url, grpc_port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Block]:
    """The README's own-checkpoint export, with the shipped digits checkpoint as resnet50_split.pth, at 32²."""
    [block] = _blocks_run_by("test_your_own_checkpoint", 1)
    cwd = tmp_path_factory.mktemp("own_checkpoint")
    shutil.copy(ROOT / "niff/assets/digits_resnet.pt", cwd / "resnet50_split.pth")
    run(commands(block)[0].replace("--size 224", "--size 32"), cwd)
    assert (cwd / "models/resnet50_split/1/model.onnx").is_file()
    return cwd, block


def test_your_own_checkpoint(own_checkpoint: tuple[Path, Block]):
    cwd, block = own_checkpoint
    with serving(commands(block)[1], cwd) as (url, _):
        assert httpx.get(f"{url}/v2/models/resnet50_split", timeout=10).json()["versions"] == ["1"]


def test_model_library_snippet(workdir: Path):
    [block] = _blocks_run_by("test_model_library_snippet", 1)
    weights = torch.load(ROOT / "niff/assets/digits_resnet.pt", weights_only=True)
    torch.save({"model": weights, "model_ema": weights}, workdir / "ckpt.pth")
    run(block.text, workdir, block.language)


def test_kserve_request_json(workdir: Path):
    [block] = _blocks_run_by("test_kserve_request_json", 1)
    run(block.text, workdir, block.language)
    [request] = json.loads((workdir / "request.json").read_text())["inputs"]
    assert {k: request[k] for k in ("name", "shape", "datatype")} == {
        "name": "image",
        "shape": [1],
        "datatype": "BYTES",
    }
    assert base64.b64decode(request["data"][0]) == (ROOT / "examples/digits/digit-7.png").read_bytes()


def test_rollout(workdir: Path):
    """Version 1 of digits in models/, then the Rollout's steps 1 and 4; niff-serve then serves version 2."""
    export, remove = _blocks_run_by("test_rollout", 2)
    run("niff-export niff/assets/digits_resnet.pt --size 32 --name digits", workdir)
    shutil.copy(ROOT / "niff/assets/digits_resnet.pt", workdir / "digits_v2.pt")
    run(export.text, workdir)
    digits = workdir / "models/digits"
    assert (digits / "1/model.onnx").is_file() and (digits / "2/model.onnx").is_file()
    assert "versions: 1" in (digits / "config.pbtxt").read_text()
    run(remove.text, workdir)
    assert not (digits / "1").exists()
    with serving("niff-serve --model-repository models", workdir) as (url, _):
        assert httpx.get(f"{url}/v2/models/digits", timeout=10).json()["versions"] == ["2"]


def test_niff_report(workdir: Path):
    [block] = _blocks_run_by("test_niff_report", 1)
    [synopsis] = commands(block)
    filled = re.sub(r" \[.*\]", "", synopsis)
    for placeholder, value in {"CHECKPOINT": "niff/assets/digits_resnet.pt", "S": "32", "DIR": "report"}.items():
        filled = re.sub(rf"\b{placeholder}\b", value, filled)
    run(filled, workdir)
    assert {"report.json", "report.md", "kernels.png"} <= {p.name for p in (workdir / "report").iterdir()}


def test_niff_eval_on_the_digits(workdir: Path):
    """The output the docs show: 446, 446 and 444 of 450 (eager, exact, compact with K = 9)."""
    [block] = _blocks_run_by("test_niff_eval_on_the_digits", 1)
    table = run(block.text, workdir)
    for candidate, score in [("eager PyTorch", 446), ("exact export (ONNX)", 446), ("compact export (ONNX)", 444)]:
        assert f"| {candidate} | {score / 450:.2%} ({score}/450) |".replace("%", " %") in table


def test_service_guide(own_checkpoint: tuple[Path, Block]):
    """docs/service.md's commands and clients, against the README's export (a digits model named resnet50_split)."""
    start, curl, http_client, extensions, grpc_client = _blocks_run_by("test_service_guide", 5)
    cwd, _ = own_checkpoint
    Image.open(ROOT / "examples/digits/digit-7.png").convert("RGB").save(cwd / "cat.jpg", quality=95)
    shutil.copy(ROOT / "examples/digits/digit-3.png", cwd / "dog.png")
    *plain, with_key = commands(start)
    for command in plain:
        with serving(command, cwd):
            pass
    with serving(with_key, cwd) as (url, grpc_port):
        port = int(url.rpartition(":")[2])
        first, second = json_values(run(on_ports(curl.text, port, grpc_port), cwd, KEY=KEY))
        assert [c["label"] for c in first["predictions"][0]["top_k"]][:1] == ["7"]
        assert len(first["predictions"][0]["top_k"]) == 3
        assert [p["top_k"][0]["label"] for p in second["predictions"]] == ["7", "3"]
        http_snippet = on_ports(http_client.text, port, grpc_port).replace("224", "32")
        printed = run(http_snippet + "print(logits.shape, probabilities.argmax(1))", cwd, "python")
        assert printed.split() == ["(2,", "10)", "[7]"]
        run(http_snippet + on_ports(extensions.text, port, grpc_port), cwd, "python")
        printed = run(on_ports(grpc_client.text, port, grpc_port) + "print(probabilities.argmax(1))", cwd, "python")
        assert printed.split() == ["[7]"]
