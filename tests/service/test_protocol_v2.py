"""The KServe v2 codec in-process: decode_request and encode_response, checked against Triton's own client
library (which builds requests and parses responses without a server) and against every malformed request."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from niff_serve.core.batcher import BatchResult
from niff_serve.core.errors import BadRequest
from niff_serve.core.inference import InferenceResult
from niff_serve.core.postprocessing import softmax
from niff_serve.core.protocol_v2 import DecodedRequest, TensorShape
from niff_serve.http.v2_json import HEADER_LENGTH, decode_request, encode_response

pytestmark = pytest.mark.fast

SHAPE = TensorShape(size=4, num_classes=3, max_batch_size=8)
COUNT = 3 * 4 * 4


def tensor(batch: int = 2) -> np.ndarray:
    return np.arange(batch * COUNT, dtype=np.float32).reshape(batch, 3, 4, 4) / 7


def decode(body: bytes, header_length: str | None = None) -> DecodedRequest:
    return decode_request(body, header_length, "tiny", SHAPE, max_json_bytes=1 << 30, claim=lambda size: None)


def from_triton_client(
    inputs: list[triton.InferInput], outputs: list[triton.InferRequestedOutput] | None = None, **options: Any
) -> DecodedRequest:
    """A request body exactly as tritonclient.http sends it, decoded by the server's codec."""
    body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs, **options)
    header_length = None if json_size is None else str(json_size)
    return decode(body, header_length)


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_tensor_from_tritonclient(binary: bool) -> None:
    data = tensor()
    item = triton.InferInput("input", list(data.shape), "FP32")
    item.set_data_from_numpy(data, binary_data=binary)
    decoded = from_triton_client([item], request_id="r-7", timeout=250_000)
    request = decoded.inference
    assert request.id == "r-7" and request.images is None and request.timeout_s == 0.25
    assert request.tensor is not None and request.tensor.dtype == np.float32
    np.testing.assert_array_equal(request.tensor, data)
    # Without an outputs list, tritonclient asks for every output as binary data.
    assert decoded.outputs == {"logits": True, "probabilities": True}


def test_images_as_binary_from_tritonclient_and_as_base64_json() -> None:
    images = [b"\xff\xd8\xff first", b"", b"\x89PNG third image"]
    item = triton.InferInput("image", [len(images)], "BYTES")
    item.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    request = from_triton_client([item]).inference
    assert request.tensor is None and [upload.data for upload in request.images] == images
    data = [base64.b64encode(image).decode() for image in images]
    body = {"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": data}]}
    assert [upload.data for upload in decode(json.dumps(body).encode()).inference.images] == images


def test_nested_json_data_and_n_by_1_image_shape() -> None:
    nested = tensor(1).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": nested}]}
    decoded = decode(json.dumps(body).encode())
    np.testing.assert_array_equal(decoded.inference.tensor, tensor(1))
    image = base64.b64encode(b"abc").decode()
    body = {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [[image]]}]}
    assert [u.data for u in decode(json.dumps(body).encode()).inference.images] == [b"abc"]


def test_requested_outputs_and_their_binary_flags() -> None:
    item = triton.InferInput("input", [1, 3, 4, 4], "FP32")
    item.set_data_from_numpy(tensor(1))
    only_logits = from_triton_client([item], [triton.InferRequestedOutput("logits", binary_data=True)])
    assert only_logits.outputs == {"logits": True}
    body = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": tensor(1).ravel().tolist()}],
    }
    assert decode(json.dumps(body).encode()).outputs == {"logits": True, "probabilities": True}


def _json(request: dict[str, Any]) -> tuple[bytes, None]:
    return json.dumps(request).encode(), None


def _with_binary(request: dict[str, Any], raw: bytes, header_length: str | None = None) -> tuple[bytes, str]:
    header = json.dumps(request).encode()
    return header + raw, header_length or str(len(header))


def _fp32(**changes: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [0.5] * COUNT, **changes}


def _image(**changes: Any) -> dict[str, Any]:
    return {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(b"x").decode()], **changes}


BAD_REQUESTS: dict[str, tuple[tuple[bytes, str | None], str]] = {
    "not json": ((b"{nope", None), "invalid inference request"),
    "no inputs": (_json({"inputs": []}), "inputs: List should have at least 1 item"),
    "two inputs": (_json({"inputs": [_fp32(), _image()]}), "give exactly one input"),
    "unknown input": (_json({"inputs": [_fp32(name="pixels")]}), "unknown input 'pixels'"),
    "fp16 tensor": (_json({"inputs": [_fp32(datatype="FP16")]}), "must be FP32, not FP16"),
    "wrong shape": (_json({"inputs": [_fp32(shape=[1, 3, 5, 5])]}), "this model takes [N, 3, 4, 4]"),
    "zero batch": (_json({"inputs": [_fp32(shape=[0, 3, 4, 4], data=[])]}), "has shape [0, 3, 4, 4]"),
    "value count": (_json({"inputs": [_fp32(data=[0.5] * 5)]}), "5 values for shape [1, 3, 4, 4] (48 expected)"),
    "not numbers": (_json({"inputs": [_fp32(data=["a"] * COUNT)]}), "data must be numbers"),
    "nan (not a JSON number)": (_json({"inputs": [_fp32(data=[float("nan")] * COUNT)]}), "data must be numbers"),
    "no data": (_json({"inputs": [_fp32(data=None)]}), "has neither 'data' nor binary data"),
    "data and binary": (
        _with_binary({"inputs": [_fp32(parameters={"binary_data_size": 4})]}, b"\0" * 4),
        "has both 'data' and binary_data_size",
    ),
    "binary size mismatch": (
        _with_binary({"inputs": [_fp32(data=None, parameters={"binary_data_size": 8})]}, b"\0" * 4),
        "binary_data_size 8 but 4 binary bytes were sent",
    ),
    "binary byte count": (
        _with_binary({"inputs": [_fp32(data=None, parameters={"binary_data_size": 8})]}, b"\0" * 8),
        "8 bytes for shape [1, 3, 4, 4] (192 expected)",
    ),
    "unclaimed binary": (_with_binary({"inputs": [_fp32()]}, b"\0" * 4), "no input claims them"),
    "header length too long": (_with_binary({"inputs": [_fp32()]}, b"", "99999"), "does not fit the"),
    "header length not a number": (_with_binary({"inputs": [_fp32()]}, b"", "ten"), "'ten' does not fit"),
    "image as fp32": (_json({"inputs": [_image(datatype="FP32")]}), "must be BYTES, not FP32"),
    "image shape": (_json({"inputs": [_image(shape=[1, 2])]}), "it takes [N] or [N, 1]"),
    "image count": (_json({"inputs": [_image(shape=[2])]}), "1 elements for shape [2]"),
    "not base64": (_json({"inputs": [_image(data=["***"])]}), "element 0 is not a base64 string"),
    "truncated element length": (
        _with_binary({"inputs": [_image(data=None, parameters={"binary_data_size": 2})]}, b"\1\0"),
        "ends inside an element length",
    ),
    "element overrun": (
        _with_binary({"inputs": [_image(data=None, parameters={"binary_data_size": 6})]}, struct.pack("<I", 9) + b"ab"),
        "element of 9 bytes overruns",
    ),
    "unknown output": (_json({"inputs": [_fp32()], "outputs": [{"name": "scores"}]}), "unknown output 'scores'"),
    "classification": (
        _json({"inputs": [_fp32()], "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}),
        "classification extension is not supported",
    ),
    "flag not bool": (
        _json({"inputs": [_fp32()], "parameters": {"binary_data_output": "yes"}}),
        "'binary_data_output' must be true or false",
    ),
    "timeout": (_json({"inputs": [_fp32()], "parameters": {"timeout": 0}}), "'timeout' must be a positive number"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_requests_are_400_with_a_reason(case: str) -> None:
    (body, header_length), message = BAD_REQUESTS[case]
    with pytest.raises(BadRequest) as error:
        decode(body, header_length)
    assert error.value.status_code == 400 and message in error.value.message


LOGITS = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 40.0]], dtype=np.float32)


def _result(version: str, request_id: str | None = "q-1") -> InferenceResult:
    batch = BatchResult(LOGITS, queue_s=0.0, inference_s=0.0, batch_size=2, input_s=0.0, output_s=0.0)
    return InferenceResult("tiny", version, request_id, LOGITS, batch, preprocess_s=0.0)


def test_json_response_read_by_tritonclient() -> None:
    body, headers = encode_response(_result("3"), {"logits": False, "probabilities": False})
    assert headers == {"Content-Type": "application/json"}
    result = triton.InferResult.from_response_body(body)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("tiny", "3", "q-1")
    np.testing.assert_array_equal(result.as_numpy("logits"), LOGITS)
    np.testing.assert_allclose(result.as_numpy("probabilities"), softmax(LOGITS), rtol=1e-6)


def test_binary_response_read_by_tritonclient() -> None:
    body, headers = encode_response(_result("1"), {"probabilities": True, "logits": False})
    header_length = int(headers[HEADER_LENGTH])
    assert headers["Content-Type"] == "application/octet-stream"
    header = json.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["probabilities", "logits"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": LOGITS.nbytes}
    assert len(body) == header_length + LOGITS.nbytes
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_allclose(result.as_numpy("probabilities"), softmax(LOGITS), rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("logits"), LOGITS)


def test_only_the_requested_outputs_and_no_id_when_none_was_sent() -> None:
    body, _ = encode_response(_result("1", request_id=None), {"logits": False})
    response = json.loads(body)
    assert "id" not in response and [o["name"] for o in response["outputs"]] == ["logits"]
    assert response["outputs"][0] == {
        "name": "logits",
        "datatype": "FP32",
        "shape": [2, 3],
        "data": LOGITS.ravel().tolist(),
    }
