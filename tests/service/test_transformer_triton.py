"""Transformer mode against real Triton as the predictor: PyTriton's bundled ``tritonserver`` serves the
repository's own ``model.onnx`` files (ONNX Runtime in Python-backend models, batching on), a niff-serve
transformer sends it its preprocessed batches, and the answers are those of ONNX Runtime in-process.

PyTriton caps numpy below 2, so it has its own virtual environment, ``build/triton-venv`` (``make triton-venv``,
which ``make test`` runs first; why: triton-requirements.txt): this test, in the project's environment, runs
triton_predictor.py with that environment's python and talks to its Triton only over the network. Without that
environment the test fails, saying how to make it. Skipped, with the loader's words, only where the bundled
binaries cannot run on this machine (e.g. an older glibc than the wheel's manylinux_2_35, a missing library);
once they run, every failure fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from polling import free_port, wait_until

from niff_contract import read_model_folder

from .conftest import MINI, TINY, Photos, Reference, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
# Where `make triton-venv` puts it (the Makefile's TRITON_VENV); TRITON_PYTHON=/path/to/python overrides.
TRITON_VENV_PYTHON = ROOT / "build" / "triton-venv" / "bin" / "python"
PREDICTOR_SCRIPT = Path(__file__).with_name("triton_predictor.py")

# Each model's batches at Triton are at most this; the transformer batches as the folder's config.pbtxt says
# (16) and sends larger batches to Triton in parts.
TRITON_MAX_BATCH = 8


def triton_python() -> Path:
    python = Path(os.environ.get("TRITON_PYTHON") or TRITON_VENV_PYTHON)
    if not python.exists():
        pytest.fail(f"PyTriton's environment is missing ({python}): run `make triton-venv` (make test does it first)")
    return python


@dataclass
class TritonPredictor:
    grpc_port: int
    http_port: int
    # PyTriton restricts Triton's statistics and model-repository endpoints to a token (not metadata, inference).
    access_token: str
    log_paths: tuple[Path, Path]

    def logs(self) -> str:
        """The predictor script's output and Triton's own log, for failure messages."""
        return "\n".join(
            f"--- {path.name}:\n{path.read_text(errors='replace')[-3000:]}" for path in self.log_paths if path.exists()
        )


@pytest.fixture(scope="module")
def triton_runs_here() -> Path:
    """The Triton environment's python; skips (before any model is exported) where its binaries cannot run."""
    python = triton_python()
    probe = subprocess.run(
        [str(python), str(PREDICTOR_SCRIPT), "probe"], capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    lines = probe.stdout.strip().splitlines()
    assert probe.returncode == 0 and lines, f"the probe failed (exit {probe.returncode}): {probe.stderr[-3000:]}"
    answer = json.loads(lines[-1])
    if not answer["runs"]:
        pytest.skip(f"PyTriton's tritonserver cannot run on this machine: {answer['reason']}")
    return python


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, then whatever is left of its process group (tritonserver, backend stubs) SIGKILLed."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    process.stdin.close()


@pytest.fixture(scope="module")
def triton(
    triton_runs_here: Path, repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonPredictor]:
    """Triton serving ``tiny`` and ``mini``: each folder's model.onnx run by ONNX Runtime in the script."""
    folder = tmp_path_factory.mktemp("triton")
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    command = [str(triton_runs_here), str(PREDICTOR_SCRIPT), "serve"]
    command += ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    command += ["--max-batch-size", str(TRITON_MAX_BATCH), "--workspace", str(folder / "workspace")]
    command += ["--log-file", str(folder / "tritonserver.log")]
    for name in (TINY, MINI):
        model = read_model_folder(repository / name)
        onnx_file = repository / name / "1" / "model.onnx"
        command += ["--model", name, str(onnx_file), str(model.input_size), str(model.num_classes)]
    output = folder / "predictor.log"
    with output.open("wb") as log:
        # Its own process group, so that teardown reaches tritonserver and the backend stubs too; stdin open
        # while this test runs (the script stops when it closes).
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    predictor = TritonPredictor(grpc_port, http_port, "", (output, folder / "tritonserver.log"))
    try:

        def ready_line() -> dict | None:
            if process.poll() is not None:
                raise AssertionError(f"the Triton predictor exited with {process.returncode}:\n{predictor.logs()}")
            lines = [line for line in output.read_text(errors="replace").splitlines() if line.startswith('{"ready"')]
            return json.loads(lines[0]) if lines else None

        ready = wait_until(ready_line, lambda: f"Triton not ready:\n{predictor.logs()}", timeout=120)
        predictor.access_token = ready["access_token"]
        for name in (TINY, MINI):
            status = httpx.get(f"http://127.0.0.1:{http_port}/v2/models/{name}/ready", timeout=10).status_code
            assert status == 200, f"{name} is not ready at Triton ({status}):\n{predictor.logs()}"
        yield predictor
    finally:
        _stop(process)
    assert process.returncode == 0, f"the Triton predictor did not stop cleanly on SIGTERM:\n{predictor.logs()}"


@pytest.fixture(scope="module")
def transformer(
    repository: Path, triton: TritonPredictor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("transformer") / "server.log"
    server = ServerProcess(
        repository,
        log,
        *("--predictor", f"grpc://127.0.0.1:{triton.grpc_port}"),
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop(signal.SIGKILL)


def at_triton(triton: TritonPredictor, path: str) -> dict:
    """Triton's own answer over its HTTP endpoint."""
    response = httpx.get(
        f"http://127.0.0.1:{triton.http_port}/v2/models/{path}",
        headers={"triton-access-token": triton.access_token},
        timeout=10,
    )
    assert response.status_code == 200, f"{response.text}\n{triton.logs()[-3000:]}"
    return response.json()


def triton_successes(triton: TritonPredictor, model: str) -> int:
    stats = at_triton(triton, f"{model}/versions/1/stats")["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


@pytest.mark.parametrize("model", [TINY, MINI])
def test_classify_answers_as_onnx_runtime_in_process(
    transformer: ServerProcess, repository: Path, reference: Reference, photos: Photos, model: str
):
    classes = read_model_folder(repository / model).num_classes
    for name, data in photos.jpeg.items():
        with transformer.client() as client:
            response = client.post(f"/v1/models/{model}:classify", content=data, params={"top_k": classes})
        assert response.status_code == 200, response.text
        top = response.json()["predictions"][0]["top_k"]
        expected = reference.probabilities(model, data)
        assert [c["index"] for c in top] == list(np.argsort(-expected, kind="stable")), name
        np.testing.assert_allclose([c["probability"] for c in top], np.sort(expected)[::-1], rtol=1e-5, atol=1e-7)


def test_triton_runs_every_inference_with_its_batching(
    transformer: ServerProcess, triton: TritonPredictor, photos: Photos
):
    config = at_triton(triton, f"{TINY}/config")
    assert config["max_batch_size"] == TRITON_MAX_BATCH and "dynamic_batching" in config, config
    before = triton_successes(triton, TINY)
    with transformer.client() as client:
        for name in ("china", "flower", "china"):
            assert client.post(f"/v1/models/{TINY}:classify", content=photos.jpeg[name]).status_code == 200
    assert triton_successes(triton, TINY) == before + 3


def test_a_batch_of_images_answers_as_one_at_a_time(transformer: ServerProcess, reference: Reference, photos: Photos):
    """Several images in one request go to Triton as one batch; each answer is its image's own."""
    files = [("files", (f"{name}.jpg", data, "image/jpeg")) for name, data in photos.jpeg.items()] * 3
    with transformer.client() as client:
        response = client.post(f"/v1/models/{TINY}:classify", files=files, params={"top_k": 10})
    assert response.status_code == 200, response.text
    for (_, (_, data, _)), prediction in zip(files, response.json()["predictions"], strict=True):
        probabilities = {c["index"]: c["probability"] for c in prediction["top_k"]}
        expected = reference.probabilities(TINY, data)
        np.testing.assert_allclose([probabilities[i] for i in range(10)], expected, rtol=1e-5, atol=1e-7)


def test_v2_tensors_give_onnx_runtimes_logits(transformer: ServerProcess, reference: Reference):
    batch = np.random.default_rng(3).normal(size=(3, 3, 24, 24)).astype(np.float32)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}],
        "outputs": [{"name": "logits"}],
    }
    response = httpx.post(f"{transformer.url}/v2/models/{MINI}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["shape"] == [3, 4]
    expected = reference.logits(MINI, batch)
    np.testing.assert_allclose(np.reshape(output["data"], (3, 4)), expected, rtol=1e-5, atol=1e-6)


def test_metadata_reports_tritons_platform(transformer: ServerProcess, triton: TritonPredictor):
    tritons = at_triton(triton, f"{TINY}/versions/1")
    # PyTriton's models run in Triton's Python backend, and Triton names their platform so.
    assert tritons["platform"] == "python", tritons
    metadata = httpx.get(f"{transformer.url}/v2/models/{TINY}", timeout=10).json()
    assert metadata["platform"] == tritons["platform"]
    assert (metadata["name"], metadata["versions"]) == (TINY, ["1"])
    summary = httpx.get(f"{transformer.url}/v1/models/{TINY}", timeout=10).json()
    assert (summary["backend"], summary["device"]) == ("remote", "remote")
