"""Transformer mode (``--predictor grpc://HOST:PORT``): this server decodes, preprocesses, batches and answers,
and another niff-serve runs the models; same endpoints, same answers, no runtime loaded in the transformer."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from polling import free_port

from .conftest import MINI, TINY, Photos, ServerProcess


@pytest.fixture(scope="module")
def predictor(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(repository, tmp_path_factory.mktemp("predictor") / "server.log")
    server.wait_ready()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def transformer(
    repository: Path, predictor: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("transformer") / "server.log"
    server = ServerProcess(repository, log, "--predictor", f"grpc://{predictor.grpc_url}")
    server.wait_ready()
    yield server
    server.stop(signal.SIGKILL)


def success_count(server: ServerProcess, model: str) -> int:
    stats = httpx.get(f"{server.url}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


@pytest.mark.parametrize("model", [TINY, MINI])
def test_classify_answers_as_the_predictor_itself(transformer, predictor, photos: Photos, model):
    data = photos.jpeg["china"]
    url = f"/v1/models/{model}:classify?top_k=4"
    with transformer.client() as through, predictor.client() as direct:
        a, b = through.post(url, content=data), direct.post(url, content=data)
    assert a.status_code == b.status_code == 200, a.text
    top_a, top_b = a.json()["predictions"][0]["top_k"], b.json()["predictions"][0]["top_k"]
    assert [c["index"] for c in top_a] == [c["index"] for c in top_b]
    np.testing.assert_allclose([c["probability"] for c in top_a], [c["probability"] for c in top_b], rtol=1e-6)


def test_the_predictor_runs_every_inference(transformer, predictor, photos: Photos):
    before = success_count(predictor, TINY)
    with transformer.client() as client:
        for name in ("china", "flower", "china"):
            assert client.post(f"/v1/models/{TINY}:classify", content=photos.jpeg[name]).status_code == 200
    assert success_count(predictor, TINY) == before + 3


def test_v2_tensors_pass_through_unchanged(transformer, predictor):
    batch = np.random.default_rng(3).normal(size=(2, 3, 24, 24)).astype(np.float32)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 24, 24], "data": batch.ravel().tolist()}],
        "outputs": [{"name": "logits"}],
    }
    answers = [
        httpx.post(f"{server.url}/v2/models/{MINI}/infer", json=body, timeout=60).json()["outputs"][0]["data"]
        for server in (transformer, predictor)
    ]
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-6)


def test_the_transformer_loads_no_runtime_and_says_where_models_run(transformer):
    mapped = Path(f"/proc/{transformer.process.pid}/maps").read_text()
    assert "onnxruntime" not in mapped and "libtorch" not in mapped
    summary = httpx.get(f"{transformer.url}/v1/models/{TINY}", timeout=10).json()
    assert (summary["backend"], summary["device"]) == ("remote", "remote")
    assert httpx.get(f"{transformer.url}/v2/models/{TINY}", timeout=10).json()["platform"] == "onnxruntime_onnx"


def test_a_transformer_waits_for_its_predictor_and_fails_clearly_without_it(
    repository: Path, tmp_path: Path, photos: Photos
):
    """Started before its predictor, a transformer waits for it; once the predictor is gone, requests get 503
    with the reason. Without any predictor within --startup-timeout-s it stops with one line."""
    port = free_port()
    transformer = ServerProcess(repository, tmp_path / "transformer.log", "--predictor", f"grpc://127.0.0.1:{port}")
    predictor = None
    try:
        transformer.wait_for_log(lambda r: "waiting for the predictor" in r.get("message", ""))
        predictor = ServerProcess(repository, tmp_path / "predictor.log", "--grpc-port", str(port))
        transformer.wait_ready()
        with transformer.client() as client:
            assert client.post(f"/v1/models/{TINY}:classify", content=photos.jpeg["flower"]).status_code == 200
            predictor.stop(signal.SIGKILL)
            gone = client.post(f"/v1/models/{TINY}:classify", content=photos.jpeg["flower"])
        assert gone.status_code == 503 and "predictor is unavailable" in gone.json()["error"], gone.text
    finally:
        transformer.stop(signal.SIGKILL)
        if predictor is not None:
            predictor.stop(signal.SIGKILL)
    lonely = ServerProcess(
        repository,
        tmp_path / "lonely.log",
        *("--predictor", f"grpc://127.0.0.1:{free_port()}", "--startup-timeout-s", "1"),
    )
    assert lonely.process.wait(120) == 1
    assert "the predictor at 127.0.0.1:" in lonely.log() and "(waited 1 s)" in lonely.log()
