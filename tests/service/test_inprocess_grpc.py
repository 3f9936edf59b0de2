"""The gRPC transport in-process: the servicer called directly with serialized messages, as grpc.aio calls it,
on a started service state (models loaded through ONNX Runtime); no port, no subprocess, no torch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from niff_contract import Preprocessor, read_model_folder
from niff_serve.core.settings import Settings
from niff_serve.core.state import ServiceState
from niff_serve.grpc.server import InferenceServicer

from . import tiny_onnx
from .conftest import MINI, TINY
from .test_inprocess_http import digit_png

pytestmark = pytest.mark.fast
KEY = "grpc-in-process-key"


class Context:
    """What the servicer uses of ``grpc.aio.ServicerContext``."""

    def __init__(self, token: str | None = KEY, time_remaining: float | None = None) -> None:
        self.metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        self.remaining = time_remaining
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None
        self.trailers: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailers: Any) -> None:
        self.trailers = tuple(trailers)


Call = Callable[[InferenceServicer], Awaitable[Any]]


@pytest.fixture(scope="module")
def served(onnx_repository: Path) -> Iterator[Callable[[Call], Any]]:
    """Run calls against one started state, on one event loop kept for the module."""
    loop = asyncio.new_event_loop()
    settings = Settings(model_repository=onnx_repository, grpc_port=0, api_key=KEY, max_batch_delay_ms=1)
    state = ServiceState(settings)
    loop.run_until_complete(state.start())
    servicer = InferenceServicer(state)
    try:
        yield lambda call: loop.run_until_complete(call(servicer))
    finally:
        loop.run_until_complete(state.stop())
        loop.close()


def infer_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model, id="r1")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request.SerializeToString()


def test_tensor_inference_answers_the_logits(served):
    batch = np.random.default_rng(1).normal(size=(3, 3, 32, 32)).astype(np.float32)
    message = infer_request(TINY, "input", "FP32", list(batch.shape), batch.tobytes())
    context = Context()
    response = served(lambda s: s.ModelInfer(message, context))
    assert context.code is None and response.id == "r1" and response.model_version == "1"
    names = [output.name for output in response.outputs]
    logits = np.frombuffer(response.raw_output_contents[names.index("logits")], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(logits, tiny_onnx.logits(batch, 10), rtol=1e-5, atol=1e-5)
    assert ("x-request-id", context.trailers[0][1]) == context.trailers[0]


def test_image_inference_preprocesses_as_the_folder_says(served, onnx_repository):
    image = digit_png(4)
    message = infer_request(MINI, "image", "BYTES", [1], len(image).to_bytes(4, "little") + image)
    response = served(lambda s: s.ModelInfer(message, Context()))
    names = [output.name for output in response.outputs]
    logits = np.frombuffer(response.raw_output_contents[names.index("logits")], dtype="<f4")
    folder = read_model_folder(onnx_repository / MINI)
    expected = tiny_onnx.logits(Preprocessor(folder.manifest.preprocessing)(image)[None], 4, seed=1)[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("message", "token", "code", "words"),
    [
        (
            infer_request(TINY, "input", "FP32", [1, 3, 32, 32], bytes(4 * 3 * 32 * 32)),
            None,
            "UNAUTHENTICATED",
            "Bearer",
        ),
        (
            infer_request(TINY, "input", "FP32", [1, 3, 32, 32], bytes(4 * 3 * 32 * 32)),
            "wrong",
            "UNAUTHENTICATED",
            "not valid",
        ),
        (infer_request("nope", "input", "FP32", [1, 3, 32, 32], b""), KEY, "NOT_FOUND", "unknown model"),
        (
            infer_request(TINY, "input", "FP32", [1, 3, 16, 16], bytes(4 * 3 * 16 * 16)),
            KEY,
            "INVALID_ARGUMENT",
            "[N, 3, 32, 32]",
        ),
        (infer_request(TINY, "image", "BYTES", [1], b"\x03\x00\x00\x00abc"), KEY, "INVALID_ARGUMENT", "image 0"),
        (b"\xff\xff\xff", KEY, "INVALID_ARGUMENT", "not a valid"),
    ],
)
def test_refusals_carry_the_status_and_say_why(served, message, token, code, words):
    context = Context(token)
    assert served(lambda s: s.ModelInfer(message, context)) is None
    assert context.code == getattr(grpc.StatusCode, code) and words in context.details


def test_metadata_and_an_expired_deadline(served):
    request = service_pb2.ModelMetadataRequest(name=TINY).SerializeToString()
    metadata = served(lambda s: s.ModelMetadata(request, Context()))
    assert metadata.platform == "onnxruntime_onnx" and [i.name for i in metadata.inputs] == ["input", "image"]
    image = digit_png(1)
    message = infer_request(TINY, "image", "BYTES", [1], len(image).to_bytes(4, "little") + image)
    context = Context(time_remaining=0.0)
    assert served(lambda s: s.ModelInfer(message, context)) is None
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
