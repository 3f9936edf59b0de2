"""KServe v2 against a real server, through Triton's own Python client (``tritonclient.http``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from niff_contract import parse_config
from niff_serve.core.postprocessing import softmax

from .conftest import DIGIT_LABELS, MINI, TINY, Photos, Reference, ServerProcess, export_test_model


@pytest.fixture
def tc(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def batch(photos: Photos, reference: Reference) -> np.ndarray:
    """Three real photos, preprocessed for the tiny model: ``[3, 3, 32, 32]``."""
    images = [photos.jpeg["china"], photos.jpeg["flower"], photos.encode("china", "PNG", "L")]
    return np.stack([reference.preprocess(TINY, data) for data in images])


def test_health_and_metadata(tc: triton.InferenceServerClient, server: ServerProcess) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready(TINY, headers=server.headers)
    assert tc.is_model_ready(TINY, "1", headers=server.headers)
    assert not tc.is_model_ready(TINY, "2", headers=server.headers)
    ready = httpx.get(f"{server.url}/v2/models/{TINY}/ready", headers=server.headers)
    assert ready.status_code == 200 and ready.json() == {"name": TINY, "ready": True}
    metadata = tc.get_model_metadata(MINI, headers=server.headers)
    assert metadata["name"] == MINI and metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in metadata["inputs"]} == {
        "input": ("FP32", [-1, 3, 24, 24]),
        "image": ("BYTES", [-1]),
    }
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {"logits": [-1, 4], "probabilities": [-1, 4]}
    assert tc.get_server_metadata(headers=server.headers)["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
        "statistics",
        "model_repository",
    ]


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_tensor_inference(
    tc: triton.InferenceServerClient, server: ServerProcess, reference: Reference, batch: np.ndarray, binary: bool
) -> None:
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities")]
    result = tc.infer(TINY, [tensor], outputs=outputs, request_id="r-1", headers=server.headers)
    expected = reference.logits(TINY, batch)
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities"), softmax(expected), atol=1e-6)
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == TINY and response["model_version"] == "1"


def test_default_outputs_and_versioned_path(
    tc: triton.InferenceServerClient, server: ServerProcess, reference: Reference, batch: np.ndarray
) -> None:
    tensor = triton.InferInput("input", list(batch[:1].shape), "FP32")
    tensor.set_data_from_numpy(batch[:1])
    result = tc.infer(TINY, [tensor], model_version="1", headers=server.headers)
    assert {o["name"] for o in result.get_response()["outputs"]} == {"logits", "probabilities"}
    np.testing.assert_allclose(result.as_numpy("logits"), reference.logits(TINY, batch[:1]), rtol=1e-5, atol=1e-5)


def test_bytes_input_of_encoded_images(
    tc: triton.InferenceServerClient, server: ServerProcess, photos: Photos, reference: Reference
) -> None:
    images = [photos.jpeg["flower"], photos.encode("china", "WEBP", quality=85)]
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    result = tc.infer(MINI, [tensor], outputs=[triton.InferRequestedOutput("logits")], headers=server.headers)
    expected = reference.logits(MINI, np.stack([reference.preprocess(MINI, data) for data in images]))
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)


def test_bytes_input_as_base64_json(client: httpx.Client, photos: Photos, reference: Reference) -> None:
    data = photos.jpeg["china"]
    request = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}],
        "outputs": [{"name": "probabilities"}],
    }
    response = client.post(f"/v2/models/{TINY}/infer", json=request)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [1, 10])
    np.testing.assert_allclose(output["data"], reference.probabilities(TINY, data), atol=1e-6)


def test_nested_json_data_is_accepted(client: httpx.Client, batch: np.ndarray, reference: Reference) -> None:
    request = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": batch[:1].tolist()}]}
    response = client.post(f"/v2/models/{TINY}/infer", content=json.dumps(request))
    assert response.status_code == 200, response.text
    logits = next(o for o in response.json()["outputs"] if o["name"] == "logits")
    np.testing.assert_allclose(logits["data"], reference.logits(TINY, batch[:1]).ravel(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ([1, 3, 16, 16], "FP32", r"shape \[1, 3, 16, 16\]; this model takes \[N, 3, 32, 32\]"),
        ([3, 32, 32], "FP32", "this model takes"),
        ([1, 3, 32, 32], "FP64", "must be FP32, not FP64"),
        ([1, 3, 32, 32], "INT32", "must be FP32, not INT32"),
        ([9, 3, 32, 32], "FP32", "at most 8"),
    ],
)
def test_wrong_tensor_is_a_400(
    tc: triton.InferenceServerClient, server: ServerProcess, shape: list[int], dtype: str, message: str
) -> None:
    numpy_type = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32}[dtype]
    tensor = triton.InferInput("input", shape, dtype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=numpy_type))
    with pytest.raises(InferenceServerException, match=message) as error:
        tc.infer(TINY, [tensor], headers=server.headers)
    assert error.value.status() == "400"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_are_a_400(tc: triton.InferenceServerClient, server: ServerProcess, bad: float) -> None:
    values = np.zeros((1, 3, 32, 32), dtype=np.float32)
    values[0, 1, 2, 3] = bad
    tensor = triton.InferInput("input", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(values)
    with pytest.raises(InferenceServerException, match="NaN or infinite") as error:
        tc.infer(TINY, [tensor], headers=server.headers)
    assert error.value.status() == "400"


def test_a_model_version_is_served_where_triton_looks_for_it(
    start_server: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory, batch: np.ndarray
) -> None:
    """``--model-version 3`` writes NAME/3/ and config.pbtxt serves version 3; the server answers as version 3."""
    root = tmp_path_factory.mktemp("versioned")
    folder = export_test_model(root, "versioned", size=32, labels=DIGIT_LABELS, formats=("onnx",), version=3)
    assert sorted(p.name for p in folder.iterdir()) == ["3", "config.pbtxt", "labels.txt", "niff.json"]
    manifest = json.loads((folder / "niff.json").read_text())
    assert manifest["version"] == 3 and manifest["artifacts"]["onnx"]["path"] == "3/model.onnx"
    assert list(parse_config((folder / "config.pbtxt").read_text()).version_policy.specific.versions) == [3]
    server = start_server(root)
    tc = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert tc.is_model_ready("versioned", "3") and not tc.is_model_ready("versioned", "1")
        assert tc.get_model_metadata("versioned")["versions"] == ["3"]
        tensor = triton.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = tc.infer("versioned", [tensor], model_version="3")
        assert result.get_response()["model_version"] == "3"
        session = ort.InferenceSession(str(folder / "3" / "model.onnx"), providers=["CPUExecutionProvider"])
        expected = session.run(["logits"], {"input": batch})[0]
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(InferenceServerException, match="no version '1'"):
            tc.infer("versioned", [tensor], model_version="1")
    finally:
        tc.close()
