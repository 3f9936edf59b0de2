"""The split topology (``--topology split``): front-end processes decode and answer, one inference process
holds the models and forms each batch from every front end's requests, tensors in shared memory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from polling import wait_until

from niff_contract import sha256_file

from .conftest import MINI, TINY, Photos, Reference, ServerProcess, workers_of

SERVING = "serving with 2 front-end processes and 1 inference process"


def start(repository: Path, log: Path, *args: str) -> ServerProcess:
    server = ServerProcess(repository, log, "--topology", "split", "--workers", "2", *args)
    server.wait_ready()
    wait_until(lambda: SERVING in server.log(), "the front ends and the inference process did not all serve")
    return server


def inference_pids(server: ServerProcess) -> list[int]:
    return [
        pid
        for pid in workers_of(server)
        if b"niff_serve.process.inference" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def roles(server: ServerProcess) -> tuple[int, list[int]]:
    """The inference process's pid and the front ends' pids."""
    children, inference = workers_of(server), inference_pids(server)
    assert len(inference) == 1 and len(children) == 3, children
    return inference[0], [pid for pid in children if pid != inference[0]]


@pytest.fixture(scope="module")
def split(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start(repository, tmp_path_factory.mktemp("split") / "server.log", "--max-batch-delay-ms", "300")
    yield server
    server.stop(signal.SIGKILL)


def classify_all(server: ServerProcess, images: list[bytes], model: str = TINY) -> list[httpx.Response]:
    """One request per image, each on its own connection, all at once."""

    def one(data: bytes) -> httpx.Response:
        with server.client() as client:
            return client.post(f"/v1/models/{model}:classify?top_k=10", content=data)

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, images))


@pytest.mark.parametrize("model", [TINY, MINI])
def test_answers_are_the_models(split, reference: Reference, photos: Photos, model):
    data = photos.jpeg["china"]
    with split.client() as client:
        top_k = 10 if model == TINY else 4
        response = client.post(f"/v1/models/{model}:classify?top_k={top_k}", content=data)
    reference.assert_answers(model, data, response)


def counts(server: ServerProcess) -> tuple[int, int]:
    """The model's inference and execution counts, as Triton's statistics extension answers them."""
    stats = httpx.get(f"{server.url}/v2/models/{TINY}/stats", timeout=10).json()["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_one_batch_holds_requests_from_every_front_end_and_metrics_are_one_view(split, photos: Photos):
    before = {
        "batches": split.metric("niff_batch_size_count", model=TINY),
        "requests": split.metric("niff_inference_requests_total", model=TINY, outcome="success"),
    }
    inferences, executions = counts(split)
    responses = classify_all(split, [photos.jpeg["china"], photos.jpeg["flower"]] * 4)
    assert [r.status_code for r in responses] == [200] * 8
    # Any front end's /metrics and statistics show the whole server: 8 requests, counted once, in batches
    # that the inference process formed.
    assert split.metric("niff_inference_requests_total", model=TINY, outcome="success") == before["requests"] + 8
    batches = split.metric("niff_batch_size_count", model=TINY) - before["batches"]
    assert 1 <= batches < 8
    now = counts(split)
    assert now[0] - inferences == 8 and now[1] - executions == batches


def test_front_ends_load_no_runtime(split):
    inference, front_ends = roles(split)
    assert "onnxruntime" in Path(f"/proc/{inference}/maps").read_text()
    for pid in front_ends:
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" not in mapped and "libtorch" not in mapped
    summary = httpx.get(f"{split.url}/v1/models/{TINY}", timeout=10).json()
    assert summary["backend"] == "remote"


def test_v2_timeout_and_full_queue_hold_across_the_split(split, photos: Photos):
    image = photos.jpeg["flower"]
    raw = len(image).to_bytes(4, "little") + image
    header = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"timeout": 1000},  # 1 ms, in a 300 ms batching window
    }
    text = json.dumps(header).encode()
    response = httpx.post(
        f"{split.url}/v2/models/{TINY}/infer",
        content=text + raw,
        headers={"Inference-Header-Content-Length": str(len(text))},
        timeout=30,
    )
    assert response.status_code == 504, response.text


def test_sigterm_answers_every_request_in_flight(repository: Path, tmp_path: Path, photos: Photos):
    server = start(repository, tmp_path / "server.log", "--max-batch-delay-ms", "1500")
    try:
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(classify_all, server, [photos.jpeg["china"]]) for _ in range(4)]
            wait_until(lambda: server.metric("niff_queue_depth", model=TINY) >= 4, "the requests were not queued")
            server.process.send_signal(signal.SIGTERM)
            answers = [future.result()[0] for future in pending]
        assert [a.status_code for a in answers] == [200] * 4
        assert server.process.wait(60) == 0
    finally:
        server.stop(signal.SIGKILL)


@pytest.mark.parametrize(("sig", "words"), [(signal.SIGKILL, "exited with"), (signal.SIGSTOP, "sent no heartbeat")])
def test_a_dead_or_hung_inference_process_stops_the_server(repository: Path, tmp_path: Path, sig: int, words: str):
    server = start(repository, tmp_path / "server.log")
    inference, _ = roles(server)
    try:
        os.kill(inference, sig)
        assert server.process.wait(60) == 1
        assert f"the inference process {inference} {words}" in server.log()
    finally:
        server.stop(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # the supervisor killed it
            os.kill(inference, signal.SIGKILL)


def test_a_model_that_cannot_load_stops_start_up_with_one_line(repository: Path, tmp_path: Path):
    folder = Path(shutil.copytree(repository / MINI, tmp_path / "models" / MINI))
    (folder / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    manifest = json.loads((folder / "niff.json").read_text())
    manifest["artifacts"]["onnx"]["sha256"] = sha256_file(folder / "1" / "model.onnx")
    (folder / "niff.json").write_text(json.dumps(manifest))
    server = ServerProcess(tmp_path / "models", tmp_path / "server.log", "--topology", "split", "--workers", "2")
    assert server.process.wait(120) == 1
    lines = [line for line in server.log().splitlines() if line.startswith("niff-serve: error:")]
    assert len(lines) == 1 and "start-up failed: model 'mini': ONNX Runtime cannot load model.onnx" in lines[0]
    assert "Traceback" not in server.log()


def test_the_api_key_is_checked_by_the_front_ends(repository: Path, tmp_path: Path, photos: Photos):
    server = ServerProcess(
        repository, tmp_path / "server.log", "--topology", "split", "--workers", "2", api_key="split-key"
    )
    try:
        server.wait_ready()
        with server.client() as client:
            assert client.post(f"/v1/models/{TINY}:classify", content=photos.jpeg["china"]).status_code == 200
        anonymous = httpx.post(f"{server.url}/v1/models/{TINY}:classify", content=photos.jpeg["china"], timeout=30)
        assert anonymous.status_code == 401
        batch = np.zeros((1, 3, 32, 32), dtype=np.float32)
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": batch.ravel().tolist()}]
        }
        assert httpx.post(f"{server.url}/v2/models/{TINY}/infer", json=body, headers=server.headers).status_code == 200
    finally:
        server.stop(signal.SIGKILL)


def tensor_request(server: ServerProcess, rows: int) -> httpx.Response:
    tensor = {"name": "input", "datatype": "FP32", "shape": [rows, 3, 32, 32], "data": [0.0] * (rows * 3 * 32 * 32)}
    return httpx.post(f"{server.url}/v2/models/{TINY}/infer", json={"inputs": [tensor]}, timeout=60)


def test_a_full_queue_answers_503_with_retry_after(repository: Path, tmp_path: Path):
    """Admission holds across the split: three images wait in the inference process's batching window (a batch
    takes four, the queue four), so two more are refused at once, with Retry-After."""
    options = ("--max-batch-size", "4", "--max-queue-size", "4", "--max-batch-delay-ms", "5000")
    server = ServerProcess(repository, tmp_path / "server.log", "--topology", "split", "--workers", "1", *options)
    try:
        server.wait_ready()
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(tensor_request, server, 3)
            wait_until(lambda: server.metric("niff_queue_depth", model=TINY) >= 3, "three images not queued")
            refused = tensor_request(server, 2)
            assert waiting.result().status_code == 200
        assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
        assert "queue limit" in refused.json()["error"]
    finally:
        server.stop(signal.SIGKILL)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_several_inference_processes_share_the_batches(repository: Path, tmp_path: Path, reference: Reference):
    """--inference-processes 2 (by default one per GPU): each holds the models, and the front ends send each
    batch to the one with the fewest of their batches in flight."""
    args = ("--topology", "split", "--workers", "2", "--inference-processes", "2", "--max-batch-delay-ms", "20")
    server = ServerProcess(repository, tmp_path / "server.log", *args)
    try:
        server.wait_ready()
        wait_until(lambda: "serving with 2 front-end processes and 2 inference processes" in server.log(), "not all up")
        inference = inference_pids(server)
        assert len(inference) == 2
        before = [cpu_ticks(pid) for pid in inference]
        batch = np.random.default_rng(5).normal(size=(8, 3, 32, 32)).astype(np.float32)
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [8, 3, 32, 32], "data": batch.ravel().tolist()}]
        }

        def infer(_: int) -> np.ndarray:
            answer = httpx.post(f"{server.url}/v2/models/{TINY}/infer", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
            logits = {output["name"]: output["data"] for output in answer.json()["outputs"]}["logits"]
            return np.reshape(logits, (8, 10))

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(infer, range(48)))
        expected = reference.logits(TINY, batch)
        for logits in answers:
            np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
        assert all(cpu_ticks(pid) > ticks for pid, ticks in zip(inference, before, strict=True))
    finally:
        server.stop(signal.SIGKILL)
