"""The HTTP transport in-process: the real app and its lifespan (models load through ONNX Runtime), driven
through httpx by Starlette's TestClient; no subprocess, no port, no torch. The real-server tests
(tests/service/test_server_*.py) cover what only a running server shows (connections, signals, workers)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tiny_onnx
from PIL import Image
from sklearn.datasets import load_digits
from starlette.testclient import TestClient

from niff_contract import Preprocessor, read_model_folder
from niff_serve.core.postprocessing import softmax
from niff_serve.core.settings import Settings
from niff_serve.process.serving import create_app

from .conftest import MINI, TINY

pytestmark = pytest.mark.fast
KEY = "in-process-key"


@pytest.fixture(scope="module")
def client(onnx_repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=onnx_repository, grpc_port=0, api_key=KEY, max_batch_delay_ms=1)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def digit_png(index: int) -> bytes:
    """One of scikit-learn's handwritten digits, 8×8 scaled to 0–255, as a PNG."""
    image = load_digits().images[index] * (255 / 16)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def expected_probabilities(repository: Path, model: str, data: bytes) -> np.ndarray:
    folder = read_model_folder(repository / model)
    batch = Preprocessor(folder.manifest.preprocessing)(data)[None]
    return softmax(tiny_onnx.logits(batch, folder.num_classes, seed=0 if model == TINY else 1))[0]


@pytest.mark.parametrize("model", [TINY, MINI])
def test_classify_answers_what_the_model_computes(client, onnx_repository, model):
    data = digit_png(3)
    response = client.post(f"/v1/models/{model}:classify?top_k=3", content=data)
    assert response.status_code == 200, response.text
    top = response.json()["predictions"][0]["top_k"]
    expected = expected_probabilities(onnx_repository, model, data)
    order = np.argsort(-expected)[:3]
    assert [c["index"] for c in top] == list(order)
    np.testing.assert_allclose([c["probability"] for c in top], expected[order], rtol=1e-5)


def test_classify_takes_several_files_and_keeps_their_names(client):
    files = [("files", (f"digit-{i}.png", digit_png(i), "image/png")) for i in range(3)]
    response = client.post("/v1/models/tiny:classify", files=files)
    assert response.status_code == 200, response.text
    assert [p["filename"] for p in response.json()["predictions"]] == ["digit-0.png", "digit-1.png", "digit-2.png"]


def test_v2_json_tensor_infer_returns_the_logits(client):
    batch = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(batch.shape), "data": batch.ravel().tolist()}]
    }
    response = client.post("/v2/models/tiny/infer", json=body | {"outputs": [{"name": "logits"}]})
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "logits" and output["shape"] == [2, 10]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 10)), tiny_onnx.logits(batch, 10), rtol=1e-5, atol=1e-5)


def test_v2_binary_images_infer(client, onnx_repository):
    images = [digit_png(5), digit_png(6)]
    raw = b"".join(len(image).to_bytes(4, "little") + image for image in images)
    header = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    text = json.dumps(header).encode()
    response = client.post(
        "/v2/models/tiny/infer",
        content=text + raw,
        headers={"Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    probabilities = np.frombuffer(response.content[length:], dtype="<f4").reshape(2, 10)
    expected = np.stack([expected_probabilities(onnx_repository, TINY, image) for image in images])
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5)


def test_v2_base64_images_in_json(client, onnx_repository):
    data = digit_png(7)
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}]}
    response = client.post("/v2/models/mini/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    np.testing.assert_allclose(outputs["probabilities"], expected_probabilities(onnx_repository, MINI, data), rtol=1e-5)


def test_metadata_and_readiness(client):
    metadata = client.get("/v2/models/tiny").json()
    assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
    assert {i["name"] for i in metadata["inputs"]} == {"input", "image"}
    assert client.get("/v2/health/ready").json()["ready"] is True
    assert {m["name"] for m in client.get("/v1/models").json()["models"]} == {TINY, MINI}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("post", "/v1/models/nope:classify", b"x", 404, "unknown model"),
        ("post", "/v1/models/tiny:classify?top_k=0", b"x", 422, "top_k"),
        ("post", "/v1/models/tiny:classify?top_k=11", b"x", 400, "10 classes"),
        ("post", "/v1/models/tiny:classify", b"not an image", 415, "image 0"),
        ("post", "/v1/models/tiny:classify", b"", 400, "empty"),
        ("post", "/v2/models/tiny/infer", b"{", 400, "invalid inference request"),
        ("post", "/v2/models/tiny/versions/2/infer", b"{}", 404, "no version '2'"),
        ("get", "/v2/models/tiny/versions/2", None, 404, "no version '2'"),
    ],
)
def test_bad_requests_get_a_clear_error(client, method, path, body, status, words):
    response = client.request(method.upper(), path, content=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_without_the_key_inference_is_refused_and_probes_stay_open(client):
    anonymous = TestClient(client.app)
    response = anonymous.post("/v1/models/tiny:classify", content=digit_png(1))
    assert response.status_code == 401 and "Authorization" in response.json()["error"]
    assert anonymous.get("/healthz").status_code == 200


def test_statistics_and_metrics_count_the_inferences(client):
    before = client.get("/v2/models/tiny/stats").json()["model_stats"][0]["inference_stats"]["success"]["count"]
    assert client.post("/v1/models/tiny:classify", content=digit_png(2)).status_code == 200
    after = client.get("/v2/models/tiny/stats").json()["model_stats"][0]["inference_stats"]["success"]["count"]
    assert int(after) == int(before) + 1
    metrics = client.get("/metrics").text
    assert "niff_http_requests_total{" in metrics and 'route="/v1/models/{name}:classify"' in metrics
