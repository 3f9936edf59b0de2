"""The REST API against a real server: classification of real photos, metadata, auth, request ids, docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from niff_contract import read_model_folder

from .conftest import DIGIT_LABELS, MINI, TINY, Photos, Reference, ServerProcess


def assert_prediction_matches(prediction: dict, expected: np.ndarray, labels: list[str], k: int) -> None:
    best = np.argsort(-expected, kind="stable")[:k]
    assert [c["index"] for c in prediction["top_k"]] == best.tolist()
    assert [c["label"] for c in prediction["top_k"]] == [labels[i] for i in best]
    np.testing.assert_allclose([c["probability"] for c in prediction["top_k"]], expected[best], atol=1e-5)


def test_classify_a_photo(client: httpx.Client, photos: Photos, reference: Reference, server: ServerProcess) -> None:
    data = photos.jpeg["china"]
    response = client.post(f"/v1/models/{TINY}:classify", content=data, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["model_version"]) == (TINY, "1")
    [prediction] = body["predictions"]
    assert prediction["filename"] is None and len(prediction["top_k"]) == 5
    assert_prediction_matches(prediction, reference.probabilities(TINY, data), DIGIT_LABELS, k=5)
    timing = body["timing"]
    assert timing["batch_size"] >= 1 and timing["total_ms"] >= timing["inference_ms"] > 0


def test_classify_several_files_keeps_their_order(client: httpx.Client, photos: Photos, reference: Reference) -> None:
    files = [
        ("files", ("flower.jpg", photos.jpeg["flower"], "image/jpeg")),
        ("files", ("china.png", photos.encode("china", "PNG"), "image/png")),
        ("other", ("flower.webp", photos.encode("flower", "WEBP", quality=90), "image/webp")),
    ]
    response = client.post(f"/v1/models/{MINI}:classify", files=files, params={"top_k": 2})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["filename"] for p in predictions] == ["flower.jpg", "china.png", "flower.webp"]
    for (_, (_, data, _)), prediction in zip(files, predictions, strict=True):
        assert_prediction_matches(prediction, reference.probabilities(MINI, data), ["cat", "dog", "bird", "fish"], k=2)


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("WEBP", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB")],
)
def test_every_allowed_format_and_mode(
    client: httpx.Client, photos: Photos, reference: Reference, fmt: str, mode: str
) -> None:
    data = photos.encode("flower", fmt, mode)
    response = client.post(f"/v1/models/{TINY}:classify", content=data, params={"top_k": 10})
    assert response.status_code == 200, response.text
    [prediction] = response.json()["predictions"]
    assert_prediction_matches(prediction, reference.probabilities(TINY, data), DIGIT_LABELS, k=10)


def test_model_metadata(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()["models"]
    assert {m["name"]: (m["input_size"], m["num_classes"], m["ready"]) for m in models} == {
        MINI: (24, 4, True),
        TINY: (32, 10, True),
    }
    assert {m["backend"] for m in models} == {"onnxruntime"} and {m["device"] for m in models} == {"cpu"}
    assert {m["max_batch_size"] for m in models} == {8}  # the server's limit, below the models' 64
    detail = client.get(f"/v1/models/{MINI}").json()
    assert detail["labels"] == ["cat", "dog", "bird", "fish"]
    assert detail["niff"]["preprocessing"]["interpolation"] == "bicubic"


def test_unknown_model_is_404(client: httpx.Client, photos: Photos) -> None:
    for response in (
        client.get("/v1/models/nope"),
        client.post("/v1/models/nope:classify", content=photos.jpeg["china"]),
        client.get("/v2/models/nope"),
        client.get("/v2/models/nope/ready"),
        client.post("/v2/models/nope/infer", json={"inputs": []}),
        client.get(f"/v2/models/{TINY}/versions/2"),
    ):
        assert response.status_code == 404
        assert "nope" in response.json()["error"] or "no version '2'" in response.json()["error"]


def test_auth_guards_model_endpoints_only(server: ServerProcess, photos: Photos) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for method, path in (
            ("GET", "/v1/models"),
            ("GET", f"/v2/models/{TINY}"),
            ("POST", f"/v1/models/{TINY}:classify"),
        ):
            response = anonymous.request(method, path, content=photos.jpeg["china"] if method == "POST" else None)
            assert response.status_code == 401 and "Bearer" in response.json()["error"]
            assert response.headers["WWW-Authenticate"] == "Bearer"
        wrong = anonymous.get("/v1/models", headers={"Authorization": "Bearer wrong-key"})
        assert wrong.status_code == 401 and wrong.json() == {"error": "the API key is not valid"}
        for path in ("/v2/health/live", "/v2/health/ready", "/healthz", "/readyz", "/metrics", "/docs"):
            assert anonymous.get(path).status_code == 200, path
    assert httpx.get(f"{server.url}/v1/models", headers=server.headers).status_code == 200


def test_request_id_is_echoed_or_generated(client: httpx.Client, server: ServerProcess) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    too_long = client.get("/healthz", headers={"X-Request-ID": "x" * 500}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", too_long)
    client.get("/v1/models", headers={"X-Request-ID": "find-me-in-the-log"})
    # The access line is written once the response has been sent: wait for it.
    [record] = server.wait_for_log(lambda r: r.get("request_id") == "find-me-in-the-log")
    assert record["logger"] == "niff_serve.access" and record["status"] == 200 and record["route"] == "/v1/models"


def test_docs_render_without_a_cdn(client: httpx.Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script src" not in page.text and "cdn" not in page.text.lower() and 'fetch("openapi.json")' in page.text
    spec = client.get("/openapi.json").json()
    assert {"/v1/models/{name}:classify", "/v2/models/{name}/infer", "/metrics"} <= set(spec["paths"])
    assert client.get("/redoc").status_code == 404


def test_openapi_describes_the_running_server(
    client: httpx.Client, slow_server: ServerProcess, repository: Path
) -> None:
    """The document a generated client or a fuzzer reads: security only where a key is set, top_k bounded
    by the served models' classes, an inference body that needs its inputs."""
    keyed = client.get("/openapi.json").json()
    with slow_server.client() as open_client:
        keyless = open_client.get("/openapi.json").json()
    classify = "/v1/models/{name}:classify"
    assert keyed["paths"][classify]["post"]["security"] == [{"HTTPBearer": []}]
    assert "securitySchemes" in keyed["components"]
    assert all("security" not in op for item in keyless["paths"].values() for op in item.values())
    assert "securitySchemes" not in keyless.get("components", {})
    [top_k] = [p for p in keyed["paths"][classify]["post"]["parameters"] if p["name"] == "top_k"]
    assert top_k["schema"]["maximum"] == max(read_model_folder(repository / m).num_classes for m in (TINY, MINI))
    body = keyed["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["inputs"] and "$ref" not in json.dumps(body)


def test_metrics_describe_traffic(client: httpx.Client, server: ServerProcess, photos: Photos) -> None:
    classify = {"route": "/v1/models/{name}:classify", "method": "POST", "status": "200"}
    durations = {"route": "/v1/models/{name}:classify", "method": "POST"}
    before = server.metric("niff_batch_size_count", model=TINY)
    requests_before = server.metric("niff_http_requests_total", **classify)
    durations_before = server.metric("niff_http_request_duration_seconds_count", **durations)
    assert client.post(f"/v1/models/{TINY}:classify", content=photos.jpeg["flower"]).status_code == 200
    assert server.metric("niff_batch_size_count", model=TINY) == before + 1
    # HTTP metrics are counted once the response has been sent: wait for them.
    server.wait_for_metric("niff_http_requests_total", requests_before + 1, **classify)
    server.wait_for_metric("niff_http_request_duration_seconds_count", durations_before + 1, **durations)
    assert server.metric("niff_inference_duration_seconds_count", model=TINY) >= 1
    assert server.metric("niff_preprocess_duration_seconds_count", model=TINY) >= 1
    assert server.metric("niff_model_ready", model=MINI) == 1
    text = httpx.get(f"{server.url}/metrics").text
    assert "niff_queue_depth{" in text and "niff_http_requests_in_progress 1.0" in text
    assert "_created" not in text
