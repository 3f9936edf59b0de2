"""The gRPC transport in-process: the servicer called directly with serialized messages, as grpc.aio calls it,
on a started service state (models loaded through ONNX Runtime); no port, no subprocess, no torch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tiny_onnx
from tritonclient.grpc import service_pb2

from niff_contract import Preprocessor, read_model_folder
from niff_serve.core.settings import Settings
from niff_serve.core.state import ServiceState
from niff_serve.grpc.server import InferenceServicer
from niff_serve.grpc.shared_memory import SHM_DIR, SharedMemoryRegions

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
    internal = InferenceServicer(state, SharedMemoryRegions())  # the split topology's inference endpoint

    def run(call: Call, shared: bool = False) -> Any:
        return loop.run_until_complete(call(internal if shared else servicer))

    try:
        yield run
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


@pytest.fixture
def region(tmp_path):
    """A POSIX shared memory object of 64 KiB, as a front end makes one; removed afterwards."""
    key = f"niff-test-{os.getpid()}-{tmp_path.name}"
    path = Path(SHM_DIR) / key
    path.write_bytes(bytes(65536))
    memory = np.memmap(path, dtype="<f4", mode="r+")
    yield key, memory
    path.unlink(missing_ok=True)


def shared(parameters: Any, name: str, offset: int, size: int) -> None:
    parameters["shared_memory_region"].string_param = name
    parameters["shared_memory_offset"].int64_param = offset
    parameters["shared_memory_byte_size"].int64_param = size


def test_shared_memory_carries_the_tensors_on_the_internal_endpoint(served, region):
    key, memory = region
    register = service_pb2.SystemSharedMemoryRegisterRequest(name="batch", key=key, byte_size=65536)
    assert served(lambda s: s.SystemSharedMemoryRegister(register.SerializeToString(), Context()), shared=True)
    batch = np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32)
    memory[: batch.size] = batch.ravel()
    request = service_pb2.ModelInferRequest(model_name=TINY)
    shared(request.inputs.add(name="input", datatype="FP32", shape=[2, 3, 32, 32]).parameters, "batch", 0, batch.nbytes)
    shared(request.outputs.add(name="logits").parameters, "batch", 32768, 80)
    context = Context()
    response = served(lambda s: s.ModelInfer(request.SerializeToString(), context), shared=True)
    assert context.code is None and not response.raw_output_contents
    np.testing.assert_allclose(memory[8192 : 8192 + 20].reshape(2, 10), tiny_onnx.logits(batch, 10), rtol=1e-5)
    status = served(lambda s: s.SystemSharedMemoryStatus(b"", Context()), shared=True)
    assert status.regions["batch"].key == key and status.regions["batch"].byte_size == 65536
    unregister = service_pb2.SystemSharedMemoryUnregisterRequest(name="batch").SerializeToString()
    served(lambda s: s.SystemSharedMemoryUnregister(unregister, Context()), shared=True)
    context = Context()
    assert served(lambda s: s.ModelInfer(request.SerializeToString(), context), shared=True) is None
    assert context.code == grpc.StatusCode.NOT_FOUND and "no shared memory region 'batch'" in context.details


def test_shared_memory_is_refused_where_it_does_not_belong(served, region):
    key, _ = region
    register = service_pb2.SystemSharedMemoryRegisterRequest(name="r", key=key, byte_size=1024).SerializeToString()
    context = Context()
    assert served(lambda s: s.SystemSharedMemoryRegister(register, context)) is None
    assert context.code == grpc.StatusCode.UNIMPLEMENTED  # the public endpoint
    request = service_pb2.ModelInferRequest(model_name=TINY)
    shared(request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 32, 32]).parameters, "r", 0, 12288)
    context = Context()
    assert served(lambda s: s.ModelInfer(request.SerializeToString(), context)) is None
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "does not take shared memory" in context.details


@pytest.mark.parametrize(
    ("wanted_key", "size", "words"),
    [
        ("../etc/passwd", 8, "a shared memory key"),
        (None, 10**9, "smaller than"),
        ("niff-no-such-key", 8, "cannot open"),
    ],
)
def test_a_region_that_cannot_be_mapped_is_refused(served, region, wanted_key, size, words):
    bad = service_pb2.SystemSharedMemoryRegisterRequest(name="r", key=wanted_key or region[0], byte_size=size)
    context = Context()
    assert served(lambda s: s.SystemSharedMemoryRegister(bad.SerializeToString(), context), shared=True) is None
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and words in context.details
