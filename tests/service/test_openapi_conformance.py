"""The served OpenAPI document is exact: a request it calls valid is one the server accepts, and values it
rules out are refused (what a schema-driven fuzzer such as schemathesis checks; see
benchmarks/schemathesis_check.py). In-process: the app with its lifespan started, over ASGI."""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from niff_contract import read_model_folder
from niff_serve.core.settings import Settings
from niff_serve.process.serving import create_app

from .conftest import API_KEY, MINI, TINY

pytestmark = pytest.mark.fast

CLASSIFY = "/v1/models/{name}:classify"
INFER = "/v2/models/{name}/infer"


def _started(repository: Path, api_key: str | None) -> Iterator[TestClient]:
    settings = Settings(
        model_repository=repository,
        api_key=api_key,
        grpc_port=0,
        device="cpu",
        workers=1,
        backend_threads=1,
        preprocess_workers=1,
    )
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(settings), headers=headers) as client:  # runs the lifespan: models load
        yield client


@pytest.fixture(scope="module")
def client(onnx_repository: Path) -> Iterator[TestClient]:
    """Both models (10 and 4 classes), with an API key."""
    yield from _started(onnx_repository, API_KEY)


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(40 * 40 * 3, dtype=np.uint8).reshape(40, 40, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def _parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    [parameter] = [p for p in operation["parameters"] if p["name"] == name]
    return parameter


def _classify_operations(document: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Each classify path of the document: its operation and the model names it takes."""
    found = {}
    for path, item in document["paths"].items():
        if path.startswith("/v1/models/") and path.endswith(":classify"):
            operation = item["post"]
            if path == CLASSIFY:
                names = _parameter(operation, "name")["schema"]["enum"]
            else:
                assert all(p["name"] != "name" for p in operation["parameters"]), path
                names = [path.removeprefix("/v1/models/").removesuffix(":classify")]
            found[path] = (operation, names)
    return found


def test_classify_paths_bound_top_k_by_each_models_classes(document: dict[str, Any], onnx_repository: Path) -> None:
    """tiny has 10 classes, mini 4: the template path names tiny only, mini has a path of its own."""
    operations = _classify_operations(document)
    assert set(operations) == {CLASSIFY, f"/v1/models/{MINI}:classify"}
    for operation, names in operations.values():
        [count] = {read_model_folder(onnx_repository / name).num_classes for name in names}
        assert _parameter(operation, "top_k")["schema"] == {"type": "integer", "minimum": 1, "default": 5} | {
            "maximum": count
        }
        assert operation["security"] == [{"HTTPBearer": []}]
    assert operations[CLASSIFY][1] == [TINY]
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def test_classify_accepts_every_top_k_its_path_allows_and_refuses_more(
    client: TestClient, document: dict[str, Any]
) -> None:
    png = _png()
    for path, (operation, names) in _classify_operations(document).items():
        maximum = _parameter(operation, "top_k")["schema"]["maximum"]
        for name in names:
            url = path.replace("{name}", name)
            answer = client.post(url, params={"top_k": maximum}, content=png)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["predictions"][0]["top_k"]) == maximum
            refused = client.post(url, params={"top_k": maximum + 1}, content=png)
            assert refused.status_code == 400 and f"has {maximum} classes" in refused.json()["error"]


def test_without_an_api_key_no_classify_path_asks_for_one(onnx_repository: Path) -> None:
    for open_client in _started(onnx_repository, None):
        document = open_client.get("/openapi.json").json()
        operations = _classify_operations(document)
        assert len(operations) == 2
        assert all("security" not in operation for operation, _ in operations.values())
        assert "securitySchemes" not in document.get("components", {})


def test_repository_index_takes_only_a_json_boolean(client: TestClient, document: dict[str, Any]) -> None:
    body = document["paths"]["/v2/repository/index"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["ready"]["type"] == "boolean"
    for ready in (0, 1, "true", "false", None, [True]):
        answer = client.post("/v2/repository/index", json={"ready": ready})
        assert answer.status_code == 422 and "ready" in answer.json()["error"], (ready, answer.text)
    for body in ({"ready": True}, {"ready": False}, {}):
        answer = client.post("/v2/repository/index", json=body)
        assert answer.status_code == 200 and {m["name"] for m in answer.json()} == {TINY, MINI}
    assert client.post("/v2/repository/index").status_code == 200  # the body is optional


def test_infer_schema_rules_out_empty_tensors_and_names(document: dict[str, Any]) -> None:
    body = document["paths"][INFER]["post"]["requestBody"]["content"]["application/json"]["schema"]
    tensor = body["properties"]["inputs"]["items"]["properties"]
    assert tensor["shape"]["items"] == {"type": "integer", "minimum": 1}
    assert tensor["shape"]["minItems"] == 1 and tensor["name"]["minLength"] == 1
    [outputs] = [s for s in body["properties"]["outputs"]["anyOf"] if s.get("type") == "array"]
    assert outputs["items"]["properties"]["name"]["minLength"] == 1


def _image_input(shape: list[int], count: int, name: str = "image") -> dict[str, Any]:
    data = [base64.b64encode(_png()).decode()] * count
    return {"name": name, "shape": shape, "datatype": "BYTES", "data": data}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [_image_input([0], 1)]}, "input 'image' has shape [0]; it takes [N] or [N, 1]"),
        ({"inputs": [_image_input([1, 0], 1)]}, "input 'image' has shape [1, 0]; it takes [N] or [N, 1]"),
        ({"inputs": [_image_input([-1], 1)]}, "input 'image' has shape [-1]; it takes [N] or [N, 1]"),
        (
            {"inputs": [{"name": "input", "shape": [0, 3, 24, 24], "datatype": "FP32", "data": []}]},
            "input 'input' has shape [0, 3, 24, 24]; this model takes [N, 3, 24, 24]",
        ),
        ({"inputs": [_image_input([1], 1, name="")]}, "inputs.0.name: String should have at least 1 character"),
        (
            {"inputs": [_image_input([1], 1)], "outputs": [{"name": ""}]},
            "outputs.0.name: String should have at least 1 character",
        ),
    ],
    ids=["no images", "zero dimension", "negative dimension", "empty batch", "empty input name", "empty output name"],
)
def test_infer_refuses_what_its_schema_rules_out(client: TestClient, body: dict[str, Any], message: str) -> None:
    answer = client.post(f"/v2/models/{MINI}/infer", json=body)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_infer_accepts_the_smallest_shapes_its_schema_allows(client: TestClient) -> None:
    for shape, outputs in itertools.product(([1], [1, 1]), (None, [{"name": "probabilities"}])):
        body: dict[str, Any] = {"inputs": [_image_input(shape, 1)]}
        if outputs is not None:
            body["outputs"] = outputs
        answer = client.post(f"/v2/models/{MINI}/infer", json=body)
        assert answer.status_code == 200, answer.text
        assert {o["shape"][0] for o in answer.json()["outputs"]} == {1}
