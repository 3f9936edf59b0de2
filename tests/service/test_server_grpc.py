"""KServe v2 over gRPC against a real server, through Triton's own clients (``tritonclient.grpc`` and its
``aio`` twin) and through the raw stub for what those clients never send (typed ``contents``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from polling import wait_until
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from niff_contract import message_json
from niff_serve.core.postprocessing import softmax

from .conftest import API_KEY, MINI, TINY, Photos, Reference, ServerProcess

AUTH = {"authorization": f"Bearer {API_KEY}"}
METADATA = tuple(AUTH.items())


@pytest.fixture
def tc(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def batch(photos: Photos, reference: Reference) -> np.ndarray:
    """Three real photos, preprocessed for the tiny model: ``[3, 3, 32, 32]``."""
    images = [photos.jpeg["china"], photos.jpeg["flower"], photos.encode("china", "PNG", "L")]
    return np.stack([reference.preprocess(TINY, data) for data in images])


def tensor_input(values: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("input", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return tensor


def image_input(images: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def images_request(model: str, images: list[bytes]) -> service_pb2.ModelInferRequest:
    """What ``tritonclient.grpc`` sends for a BYTES input, built by hand for the raw stub."""
    return service_pb2.ModelInferRequest(
        model_name=model,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[len(images)])],
        raw_input_contents=[serialize_byte_tensor(np.array(images, dtype=object)).item()],
    )


def http_logits(http: triton_http.InferenceServerClient, model: str, tensor: triton_http.InferInput) -> np.ndarray:
    return http.infer(model, [tensor], headers={"Authorization": f"Bearer {API_KEY}"}).as_numpy("logits")


def raw_logits(response: service_pb2.ModelInferResponse, name: str = "logits") -> np.ndarray:
    index = [output.name for output in response.outputs].index(name)
    shape = list(response.outputs[index].shape)
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4").reshape(shape)


def test_health_and_metadata_match_http(
    tc: triton.InferenceServerClient, http: triton_http.InferenceServerClient, server: ServerProcess
) -> None:
    assert tc.is_server_live() and tc.is_server_ready()  # no API key needed, like the HTTP probes
    assert tc.is_model_ready(TINY, headers=AUTH) and tc.is_model_ready(TINY, "1", headers=AUTH)
    assert not tc.is_model_ready(TINY, "2", headers=AUTH)
    assert not tc.is_model_ready("resnet", headers=AUTH)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for model in (TINY, MINI):
        grpc_metadata = message_json(tc.get_model_metadata(model, headers=AUTH))
        assert grpc_metadata == http.get_model_metadata(model, headers=headers)
    server_metadata = message_json(tc.get_server_metadata(headers=AUTH))
    assert server_metadata == http.get_server_metadata(headers=headers)
    assert set(server_metadata["extensions"]) >= {"model_configuration", "statistics", "model_repository"}


def test_aio_client_answers_every_call_as_the_sync_one(
    tc: triton.InferenceServerClient, server: ServerProcess, batch: np.ndarray
) -> None:
    async def run() -> tuple[list[object], np.ndarray]:
        client = triton_aio.InferenceServerClient(server.grpc_url)
        try:
            answers = [
                await client.is_server_live(),
                await client.is_server_ready(),
                await client.is_model_ready(MINI, headers=AUTH),
                await client.get_server_metadata(headers=AUTH),
                await client.get_model_metadata(MINI, headers=AUTH),
                await client.get_model_config(MINI, headers=AUTH),
                await client.get_model_repository_index(headers=AUTH),
                (await client.get_inference_statistics(MINI, headers=AUTH)).model_stats[0].name,
            ]
            result = await client.infer(TINY, [tensor_input(batch)], headers=AUTH)
            return answers, result.as_numpy("logits")
        finally:
            await client.close()

    answers, logits = asyncio.run(run())
    assert answers == [
        True,
        True,
        True,
        tc.get_server_metadata(headers=AUTH),
        tc.get_model_metadata(MINI, headers=AUTH),
        tc.get_model_config(MINI, headers=AUTH),
        tc.get_model_repository_index(headers=AUTH),
        MINI,
    ]
    np.testing.assert_array_equal(logits, tc.infer(TINY, [tensor_input(batch)], headers=AUTH).as_numpy("logits"))


def test_fp32_tensor_raw_and_in_contents_equal_the_http_answer(
    tc: triton.InferenceServerClient,
    http: triton_http.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    reference: Reference,
    batch: np.ndarray,
) -> None:
    raw = tc.infer(TINY, [tensor_input(batch)], request_id="r-1", headers=AUTH)
    response = raw.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r-1", TINY, "1")
    assert [o.name for o in response.outputs] == ["logits", "probabilities"]
    typed = stub.ModelInfer(
        service_pb2.ModelInferRequest(
            model_name=TINY,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name="input",
                    datatype="FP32",
                    shape=batch.shape,
                    contents=service_pb2.InferTensorContents(fp32_contents=batch.ravel()),
                )
            ],
        ),
        metadata=METADATA,
    )
    over_http = triton_http.InferInput("input", list(batch.shape), "FP32")
    over_http.set_data_from_numpy(batch)
    expected = http_logits(http, TINY, over_http)
    np.testing.assert_array_equal(raw.as_numpy("logits"), expected)
    np.testing.assert_array_equal(raw_logits(typed), expected)
    np.testing.assert_allclose(expected, reference.logits(TINY, batch), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(raw.as_numpy("probabilities"), softmax(expected), atol=1e-6)


def test_bytes_images_raw_and_in_contents_equal_the_http_answer(
    tc: triton.InferenceServerClient,
    http: triton_http.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    photos: Photos,
    reference: Reference,
) -> None:
    images = [photos.jpeg["flower"], photos.encode("china", "WEBP", quality=85)]
    outputs = [triton.InferRequestedOutput("probabilities")]
    raw = tc.infer(MINI, [image_input(images)], outputs=outputs, headers=AUTH)
    assert [o.name for o in raw.get_response().outputs] == ["probabilities"]
    typed = stub.ModelInfer(
        service_pb2.ModelInferRequest(
            model_name=MINI,
            model_version="1",
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name="image",
                    datatype="BYTES",
                    shape=[len(images), 1],
                    contents=service_pb2.InferTensorContents(bytes_contents=images),
                )
            ],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
        ),
        metadata=METADATA,
    )
    over_http = triton_http.InferInput("image", [len(images)], "BYTES")
    over_http.set_data_from_numpy(np.array(images, dtype=object))
    expected = softmax(http_logits(http, MINI, over_http))
    np.testing.assert_array_equal(raw.as_numpy("probabilities"), raw_logits(typed, "probabilities"))
    np.testing.assert_allclose(raw.as_numpy("probabilities"), expected, atol=1e-7)
    for data, row in zip(images, raw.as_numpy("probabilities"), strict=True):
        np.testing.assert_allclose(row, reference.probabilities(MINI, data), atol=1e-6)


def test_48_concurrent_aio_clients_each_get_their_own_answer(
    server: ServerProcess, photos: Photos, reference: Reference
) -> None:
    images = [photos.jpeg["china"], photos.jpeg["flower"], photos.encode("flower", "PNG", "L")]
    tensors = [reference.preprocess(TINY, data) for data in images]
    answered = server.metric("niff_grpc_requests_total", method="ModelInfer", code="OK")

    async def one(client: triton_aio.InferenceServerClient, i: int) -> tuple[int, np.ndarray]:
        if i % 2:
            result = await client.infer(TINY, [image_input([images[i % 3]])], headers=AUTH)
        else:
            result = await client.infer(TINY, [tensor_input(tensors[i % 3][None])], headers=AUTH)
        return i, result.as_numpy("logits")

    async def run() -> list[tuple[int, np.ndarray]]:
        clients = [triton_aio.InferenceServerClient(server.grpc_url) for _ in range(4)]
        try:
            return await asyncio.gather(*(one(clients[i % 4], i) for i in range(48)))
        finally:
            await asyncio.gather(*(client.close() for client in clients))

    expected = [reference.logits(TINY, tensor[None]) for tensor in tensors]
    for i, logits in asyncio.run(run()):
        np.testing.assert_allclose(logits, expected[i % 3], rtol=1e-5, atol=1e-5)
    server.wait_for_metric("niff_grpc_requests_total", answered + 48, method="ModelInfer", code="OK")


def test_api_key_in_metadata(tc: triton.InferenceServerClient, batch: np.ndarray) -> None:
    cases = [({}, "needs 'Authorization: Bearer"), ({"authorization": "Bearer nope"}, "API key is not valid")]
    for headers, message in cases:
        for call in (
            lambda headers: tc.infer(TINY, [tensor_input(batch[:1])], headers=headers),
            tc.get_server_metadata,
        ):
            with pytest.raises(InferenceServerException, match=message) as error:
                call(headers=headers)
            assert error.value.status() == "StatusCode.UNAUTHENTICATED"
    assert tc.infer(TINY, [tensor_input(batch[:1])], headers={"authorization": f"bearer {API_KEY}"})


def test_request_id_answers_in_trailing_metadata_and_logs(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, server: ServerProcess
) -> None:
    request = service_pb2.ModelMetadataRequest(name=TINY)
    _, call = stub.ModelMetadata.with_call(request, metadata=(*METADATA, ("x-request-id", "grpc-trace-7")))
    assert ("x-request-id", "grpc-trace-7") in call.trailing_metadata()
    _, call = stub.ModelMetadata.with_call(request, metadata=(*METADATA, ("x-request-id", "two words")))
    generated = dict(call.trailing_metadata())["x-request-id"]
    assert len(generated) == 32 and generated != "two words"

    def logged() -> list[dict]:
        return [r for r in server.log_records() if r.get("request_id") in ("grpc-trace-7", generated)]

    def both_logged() -> list[dict] | None:
        records = logged()
        return records if len(records) >= 2 else None

    records = wait_until(both_logged, "two access-log lines")
    assert [(r["logger"], r["grpc_method"], r["grpc_code"]) for r in records] == [
        ("niff_serve.access", "ModelMetadata", "OK")
    ] * 2


def test_triton_timeout_parameter_is_a_deadline(slow_server: ServerProcess) -> None:
    """Triton's per-request ``timeout`` (microseconds) caps the wait in a 2 s batching window."""
    client = triton.InferenceServerClient(slow_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match=r"deadline of 0\.2\d* s passed") as error:
            client.infer(TINY, [tensor_input(np.zeros((1, 3, 32, 32), np.float32))], timeout=200_000)
    finally:
        client.close()
    assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert slow_server.metric("niff_queue_depth", model=TINY) == 0


def test_grpc_deadline_drops_the_pending_work(slow_server: ServerProcess, photos: Photos) -> None:
    dropped = slow_server.metric("niff_requests_dropped_total", model=TINY)
    batches = slow_server.metric("niff_batch_size_count", model=TINY)
    client = triton.InferenceServerClient(slow_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as error:
            client.infer(TINY, [image_input([photos.jpeg["china"]])], client_timeout=0.5)
        assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        slow_server.wait_for_metric("niff_requests_dropped_total", dropped + 1, model=TINY)
        assert slow_server.metric("niff_queue_depth", model=TINY) == 0
        client.infer(TINY, [image_input([photos.jpeg["flower"]])])
    finally:
        client.close()
    assert slow_server.metric("niff_batch_size_count", model=TINY) == batches + 1  # the dropped one never ran


def test_full_queue_is_unavailable_with_retry_info(slow_server: ServerProcess, photos: Photos) -> None:
    rejected = slow_server.metric("niff_requests_dropped_total", model=TINY, reason="queue_full")

    async def run() -> tuple[list[np.ndarray], grpc.aio.AioRpcError]:
        client = triton_aio.InferenceServerClient(slow_server.grpc_url)
        try:
            waiting = [
                asyncio.ensure_future(client.infer(TINY, [image_input([photos.jpeg["china"]])])) for _ in range(3)
            ]
            queued = lambda: slow_server.metric("niff_queue_depth", model=TINY) >= 3  # noqa: E731
            await asyncio.to_thread(wait_until, queued, "three requests not queued")
            async with grpc.aio.insecure_channel(slow_server.grpc_url) as channel:
                request = images_request(TINY, [photos.jpeg["flower"], photos.jpeg["china"]])
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            return [(await w).as_numpy("logits") for w in waiting], error.value
        finally:
            await client.close()

    answers, error = asyncio.run(run())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "queue limit of 4 images" in error.details()
    trailers = dict(error.trailing_metadata())
    assert trailers["retry-after"] == "1" and trailers["grpc-retry-pushback-ms"] == "1000"
    assert len(answers) == 3 and all(a.shape == (1, 10) for a in answers)
    assert slow_server.metric("niff_requests_dropped_total", model=TINY, reason="queue_full") == rejected + 1
