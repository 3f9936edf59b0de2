"""Triton's model-configuration, statistics and model-repository extensions on a real server, through
``tritonclient.http`` and ``tritonclient.grpc``: both answer the same, from the same source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from niff_contract import config_json, message_json, read_model_folder

from .conftest import API_KEY, MINI, TINY, Photos, ServerProcess

HTTP_AUTH = {"Authorization": f"Bearer {API_KEY}"}
GRPC_AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def grpc_client(server: ServerProcess) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def test_model_config_is_config_pbtxt_with_the_served_batching(
    http: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    repository: Path,
    client: httpx.Client,
) -> None:
    for model in (TINY, MINI):
        over_http = http.get_model_config(model, headers=HTTP_AUTH)
        assert http.get_model_config(model, "1", headers=HTTP_AUTH) == over_http
        assert message_json(grpc_client.get_model_config(model, headers=GRPC_AUTH).config) == over_http
        # The server runs with --max-batch-size 8 --max-batch-delay-ms 10; everything else is the folder's.
        expected = config_json(read_model_folder(repository / model).config)
        assert expected["max_batch_size"] != 8
        expected["max_batch_size"] = 8
        expected["dynamic_batching"]["max_queue_delay_microseconds"] = 10_000
        assert over_http == expected
    assert client.get(f"/v2/models/{TINY}/versions/2/config").status_code == 404
    with pytest.raises(InferenceServerException, match="has no version '2'") as error:
        grpc_client.get_model_config(TINY, "2", headers=GRPC_AUTH)
    assert error.value.status() == "StatusCode.NOT_FOUND"


def statistics(payload: dict, model: str) -> dict:
    [stats] = [s for s in payload["model_stats"] if s["name"] == model]
    return stats


def test_statistics_count_http_and_grpc_requests_alike(
    http: triton_http.InferenceServerClient,
    grpc_client: triton_grpc.InferenceServerClient,
    server: ServerProcess,
    photos: Photos,
) -> None:
    before = statistics(http.get_inference_statistics(TINY, headers=HTTP_AUTH), TINY)
    tensor = np.zeros((2, 3, 32, 32), np.float32)
    over_http = triton_http.InferInput("input", [2, 3, 32, 32], "FP32")
    over_http.set_data_from_numpy(tensor)
    http.infer(TINY, [over_http], headers=HTTP_AUTH)
    over_grpc = triton_grpc.InferInput("image", [1], "BYTES")
    over_grpc.set_data_from_numpy(np.array([photos.jpeg["china"]], dtype=object))
    grpc_client.infer(TINY, [over_grpc], headers=GRPC_AUTH)
    broken = triton_grpc.InferInput("image", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    with pytest.raises(InferenceServerException):
        grpc_client.infer(TINY, [broken], headers=GRPC_AUTH)

    after = statistics(http.get_inference_statistics(TINY, "1", headers=HTTP_AUTH), TINY)
    assert (
        statistics(message_json(grpc_client.get_inference_statistics(headers=GRPC_AUTH), with_defaults=True), TINY)
        == after
    )
    assert statistics(http.get_inference_statistics(headers=HTTP_AUTH), MINI)["name"] == MINI  # every model
    assert (after["name"], after["version"]) == (TINY, "1")
    assert after["inference_count"] == before["inference_count"] + 3  # images
    assert after["execution_count"] >= before["execution_count"] + 2  # batches
    assert after["last_inference"] >= before["last_inference"]
    stats, was = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] == was["success"]["count"] + 2
    assert stats["fail"]["count"] == was["fail"]["count"] + 1
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[stage]["count"] == stats["success"]["count"], stage
    assert stats["compute_infer"]["ns"] > was["compute_infer"]["ns"]
    assert stats["compute_input"]["ns"] > was["compute_input"]["ns"]  # the photo's decoding at least
    assert stats["success"]["ns"] > stats["compute_infer"]["ns"]
    batches = after["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == after["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) >= after["inference_count"]
    with pytest.raises(InferenceServerException, match="unknown model 'resnet'"):
        http.get_inference_statistics("resnet", headers=HTTP_AUTH)


def test_repository_index_lists_every_model_ready(
    http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient, client: httpx.Client
) -> None:
    expected = [{"name": MINI, "version": "1", "state": "READY"}, {"name": TINY, "version": "1", "state": "READY"}]
    assert sorted(http.get_model_repository_index(headers=HTTP_AUTH), key=lambda m: m["name"]) == expected
    index = message_json(grpc_client.get_model_repository_index(headers=GRPC_AUTH))["models"]
    assert sorted(index, key=lambda m: m["name"]) == expected
    ready = client.post("/v2/repository/index", json={"ready": True})
    assert ready.status_code == 200 and sorted(ready.json(), key=lambda m: m["name"]) == expected


def test_load_and_unload_are_refused_clearly(
    http: triton_http.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient, client: httpx.Client
) -> None:
    for action in ("load", "unload"):
        response = client.post(f"/v2/repository/models/{TINY}/{action}")
        assert response.status_code == 400 and "cannot be loaded or unloaded" in response.json()["error"]
    with pytest.raises(InferenceServerException, match="cannot be loaded or unloaded") as error:
        grpc_client.unload_model(TINY, headers=GRPC_AUTH)
    assert error.value.status() == "StatusCode.UNIMPLEMENTED"
    assert grpc_client.is_model_ready(TINY, headers=GRPC_AUTH)
    assert http.is_model_ready(TINY, headers=HTTP_AUTH)


def test_extensions_need_the_api_key(server: ServerProcess) -> None:
    for method, path in (
        ("GET", f"/v2/models/{TINY}/config"),
        ("GET", "/v2/models/stats"),
        ("GET", f"/v2/models/{TINY}/stats"),
        ("POST", "/v2/repository/index"),
    ):
        assert httpx.request(method, f"{server.url}{path}").status_code == 401, path
