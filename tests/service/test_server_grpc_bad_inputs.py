"""Hostile and broken gRPC calls against a real server: each gets a status code saying what was wrong (never
INTERNAL), and the server goes on serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .conftest import API_KEY, TINY, Photos, ServerProcess

METADATA = (("authorization", f"Bearer {API_KEY}"),)
Tensor = service_pb2.ModelInferRequest.InferInputTensor
Output = service_pb2.ModelInferRequest.InferRequestedOutputTensor
Code = grpc.StatusCode


def tensor(name: str = "input", datatype: str = "FP32", shape: tuple[int, ...] = (1, 3, 32, 32), **fields) -> Tensor:
    return Tensor(name=name, datatype=datatype, shape=shape, **fields)


def request(*inputs: Tensor, raw: list[bytes] | None = None, **fields) -> service_pb2.ModelInferRequest:
    fields.setdefault("model_name", TINY)
    return service_pb2.ModelInferRequest(inputs=inputs, raw_input_contents=raw or [], **fields)


ZEROS = np.zeros((1, 3, 32, 32), np.float32).tobytes()
NAN = np.full((1, 3, 32, 32), np.nan, np.float32).tobytes()


def typed(**contents) -> service_pb2.InferTensorContents:
    return service_pb2.InferTensorContents(**contents)


Case = tuple[grpc.StatusCode, str, Callable[[Photos], service_pb2.ModelInferRequest]]

CASES: dict[str, Case] = {
    "wrong shape": (
        Code.INVALID_ARGUMENT,
        r"shape [1, 3, 16, 16]; this model takes [N, 3, 32, 32]",
        lambda p: request(tensor(shape=(1, 3, 16, 16)), raw=[ZEROS[:3072]]),
    ),
    "no batch axis": (
        Code.INVALID_ARGUMENT,
        "this model takes",
        lambda p: request(tensor(shape=(3, 32, 32)), raw=[ZEROS]),
    ),
    "wrong datatype": (
        Code.INVALID_ARGUMENT,
        "must be FP32, not FP64",
        lambda p: request(tensor(datatype="FP64"), raw=[ZEROS + ZEROS]),
    ),
    "raw bytes shorter than the shape": (
        Code.INVALID_ARGUMENT,
        "100 bytes for shape [1, 3, 32, 32] (12288 expected)",
        lambda p: request(tensor(), raw=[ZEROS[:100]]),
    ),
    "raw bytes longer than the shape": (
        Code.INVALID_ARGUMENT,
        "24576 bytes for shape",
        lambda p: request(tensor(), raw=[ZEROS + ZEROS]),
    ),
    "BYTES element overruns": (
        Code.INVALID_ARGUMENT,
        "element of 255 bytes overruns the binary data",
        lambda p: request(tensor("image", "BYTES", (1,)), raw=[b"\xff\x00\x00\x00abcd"]),
    ),
    "BYTES count below the shape": (
        Code.INVALID_ARGUMENT,
        "1 elements for shape [2]",
        lambda p: request(tensor("image", "BYTES", (2,), contents=typed(bytes_contents=[p.jpeg["china"]]))),
    ),
    "BYTES without a shape": (
        Code.INVALID_ARGUMENT,
        "has shape []; it takes [N] or [N, 1]",
        lambda p: request(tensor("image", "BYTES", (), contents=typed(bytes_contents=[p.jpeg["china"]]))),
    ),
    "text as an image": (
        Code.INVALID_ARGUMENT,
        "image 0: the data is not",
        lambda p: request(tensor("image", "BYTES", (1,), contents=typed(bytes_contents=[b"hello"]))),
    ),
    "truncated jpeg": (
        Code.INVALID_ARGUMENT,
        "truncated or corrupt",
        lambda p: request(tensor("image", "BYTES", (1,), contents=typed(bytes_contents=[p.jpeg["china"][:20000]]))),
    ),
    "unknown model": (
        Code.NOT_FOUND,
        "unknown model 'resnet'",
        lambda p: request(tensor(), raw=[ZEROS], model_name="resnet"),
    ),
    "unknown version": (
        Code.NOT_FOUND,
        "has no version '2'; it serves version 1",
        lambda p: request(tensor(), raw=[ZEROS], model_version="2"),
    ),
    "no inputs": (Code.INVALID_ARGUMENT, "exactly one input", lambda p: request()),
    "two inputs": (
        Code.INVALID_ARGUMENT,
        "exactly one input",
        lambda p: request(tensor(), tensor(), raw=[ZEROS, ZEROS]),
    ),
    "unknown input": (
        Code.INVALID_ARGUMENT,
        "unknown input 'pixels'",
        lambda p: request(tensor("pixels"), raw=[ZEROS]),
    ),
    "more raw parts than inputs": (
        Code.INVALID_ARGUMENT,
        "raw_input_contents has 2 entries for 1 input(s)",
        lambda p: request(tensor(), raw=[ZEROS, ZEROS]),
    ),
    "raw and typed contents": (
        Code.INVALID_ARGUMENT,
        "both contents and raw_input_contents",
        lambda p: request(tensor(contents=typed(fp32_contents=[0.0] * 3072)), raw=[ZEROS]),
    ),
    "values in the wrong contents field": (
        Code.INVALID_ARGUMENT,
        "carries int_contents; its values go in contents.fp32_contents",
        lambda p: request(tensor(contents=typed(int_contents=[0] * 3072))),
    ),
    "too few typed values": (
        Code.INVALID_ARGUMENT,
        "10 values for shape [1, 3, 32, 32] (3072 expected)",
        lambda p: request(tensor(contents=typed(fp32_contents=[0.0] * 10))),
    ),
    "no values at all": (Code.INVALID_ARGUMENT, "0 values for shape", lambda p: request(tensor())),
    "NaN values": (Code.INVALID_ARGUMENT, "NaN or infinite", lambda p: request(tensor(), raw=[NAN])),
    "more images than a batch": (
        Code.INVALID_ARGUMENT,
        "9 images in one request; this model takes at most 8",
        lambda p: request(tensor(shape=(9, 3, 32, 32)), raw=[ZEROS * 9]),
    ),
    "unknown output": (
        Code.INVALID_ARGUMENT,
        "unknown output 'features'",
        lambda p: request(tensor(), raw=[ZEROS], outputs=[Output(name="features")]),
    ),
    "classification extension": (
        Code.INVALID_ARGUMENT,
        "classification extension is not supported",
        lambda p: request(
            tensor(),
            raw=[ZEROS],
            outputs=[Output(name="logits", parameters={"classification": service_pb2.InferParameter(int64_param=3)})],
        ),
    ),
    "timeout as text": (
        Code.INVALID_ARGUMENT,
        "'timeout' must be a positive number of microseconds",
        lambda p: request(tensor(), raw=[ZEROS], parameters={"timeout": service_pb2.InferParameter(string_param="5")}),
    ),
    "message above max_upload_bytes": (
        Code.RESOURCE_EXHAUSTED,
        "larger than max",
        lambda p: request(tensor(shape=(200, 3, 32, 32)), raw=[ZEROS * 200]),
    ),
}


@pytest.fixture(scope="module")
def answers(server: ServerProcess, photos: Photos) -> Iterator[dict[str, grpc.RpcError | None]]:
    """Every case sent once on one channel; the error each got (None when it was answered)."""
    errors: dict[str, grpc.RpcError | None] = {}
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for case, (_, _, build) in CASES.items():
            try:
                stub.ModelInfer(build(photos), metadata=METADATA, timeout=60)
                errors[case] = None
            except grpc.RpcError as error:
                errors[case] = error
    yield errors


@pytest.mark.parametrize("case", list(CASES))
def test_bad_call_gets_a_status_with_a_reason(answers: dict[str, grpc.RpcError | None], case: str) -> None:
    code, message, _ = CASES[case]
    error = answers[case]
    assert error is not None, "answered, not refused"
    assert error.code() == code, error.details()
    assert message in error.details()


def test_never_internal_and_still_serving_after_the_bad_calls(
    answers: dict[str, grpc.RpcError | None], server: ServerProcess, photos: Photos
) -> None:
    assert all(error is not None and error.code() != Code.INTERNAL for error in answers.values())
    assert server.metric("niff_grpc_requests_total", code="INTERNAL") == 0
    assert server.metric("niff_grpc_requests_total", code="UNKNOWN") == 0
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
        good = request(tensor("image", "BYTES", (1,), contents=typed(bytes_contents=[photos.jpeg["flower"]])))
        response = stub.ModelInfer(good, metadata=METADATA)
    assert [o.name for o in response.outputs] == ["logits", "probabilities"]
    assert server.process.poll() is None
