"""Requests that cost a naive server seconds or gigabytes, against a real one: each is answered 4xx (or refused
at the transport) before the work starts, holds little memory while it runs and none after, and the server
keeps serving. Every loop is bounded and targets 127.0.0.1."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import signal
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from hostile_inputs import chunk_flood_png, comment_flood_jpeg, truncated_jpeg, webp_bomb
from PIL import Image
from polling import wait_until
from tritonclient.grpc import service_pb2

from .conftest import API_KEY, TINY, Photos, Reference, ServerProcess

CLASSIFY = f"/v1/models/{TINY}:classify"
INFER = f"/v2/models/{TINY}/infer"
MAX_BATCH = 16
MB = 2**20


def memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@contextlib.contextmanager
def bounded_memory(server: ServerProcess, while_running: int = 100 * MB, after: int = 10 * MB) -> Iterator[None]:
    """The server grows by less than ``while_running`` during the block and is back within ``after`` of where it
    began once the block's requests are answered (freed memory returns to the operating system)."""
    pid = server.process.pid
    before = memory(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
    yield
    assert memory(pid, "VmHWM") - before < while_running
    wait_until(
        lambda: memory(pid, "VmRSS") - before <= after,
        lambda: f"resident memory stayed {(memory(pid, 'VmRSS') - before) / MB:.1f} MB above where it began",
        timeout=30,
    )


def v2_binary_bytes(elements: list[bytes], shape: list[int], **parameters: object) -> dict:
    raw = b"".join(struct.pack("<I", len(element)) + element for element in elements)
    tensor = {"name": "image", "shape": shape, "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor], "parameters": parameters}).encode()
    return {"content": header + raw, "headers": {"Inference-Header-Content-Length": str(len(header))}}


def grpc_infer(server: ServerProcess, request: service_pb2.ModelInferRequest | bytes, key: str | None = API_KEY):
    """One ModelInfer call with the message sent as given (bytes: sent as they are); the answer or the error."""
    with grpc.insecure_channel(
        server.grpc_url,
        options=[("grpc.max_send_message_length", 64 * MB), ("grpc.max_receive_message_length", 64 * MB)],
    ) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda message: message if isinstance(message, bytes) else message.SerializeToString(),
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        metadata = () if key is None else (("authorization", f"Bearer {key}"),)
        try:
            return call(request, metadata=metadata, timeout=60)
        except grpc.RpcError as error:
            return error


@pytest.fixture(scope="module")
def target(start_server, tiny_only_repository: Path, photos: Photos) -> ServerProcess:
    server = start_server(
        tiny_only_repository,
        *("--max-batch-size", str(MAX_BATCH), "--max-queue-size", "64", "--max-batch-delay-ms", "5"),
        *("--max-upload-bytes", "16000000", "--max-body-memory-bytes", "24000000", "--max-json-bytes", "16000000"),
        api_key=API_KEY,
    )
    with server.client() as client:  # warm every path once
        for _ in range(3):
            assert client.post(CLASSIFY, content=photos.jpeg["china"]).status_code == 200
            assert client.post(INFER, **v2_binary_bytes([photos.jpeg["flower"]], [1])).status_code == 200
    gc.collect()
    return server


@pytest.fixture
def client(target: ServerProcess) -> Iterator[httpx.Client]:
    with target.client() as http:
        yield http


def assert_still_serves(client: httpx.Client, photos: Photos, reference: Reference) -> None:
    reference.assert_answers(
        TINY, photos.jpeg["flower"], client.post(CLASSIFY, content=photos.jpeg["flower"], params={"top_k": 10})
    )


# --- element counts before unpacking --------------------------------------------------------------------------


def test_grpc_bytes_elements_are_counted_before_the_message_is_parsed(target: ServerProcess) -> None:
    """1.5 M one-byte images: parsing the message would make an object per element (1.6 GB for 11 M)."""
    request = service_pb2.ModelInferRequest(model_name=TINY)
    item = request.inputs.add(name="image", datatype="BYTES", shape=[1])
    item.contents.bytes_contents.extend([b"a"] * 1_500_000)
    message = request.SerializeToString()
    with bounded_memory(target):
        error = grpc_infer(target, message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"holds more than {1024 + MAX_BATCH} protobuf fields" in error.details()


def test_grpc_raw_bytes_elements_stop_at_the_declared_count(target: ServerProcess) -> None:
    raw = (struct.pack("<I", 1) + b"a") * 1_500_000
    for shape, message in (([1], "more than 1 elements"), ([1_500_000], "1500000 images in one request")):
        request = service_pb2.ModelInferRequest(model_name=TINY, raw_input_contents=[raw])
        request.inputs.add(name="image", datatype="BYTES", shape=shape)
        with bounded_memory(target):
            error = grpc_infer(target, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details(), error.details()


def test_http_binary_bytes_elements_stop_at_the_declared_count(
    target: ServerProcess, client: httpx.Client, photos: Photos, reference: Reference
) -> None:
    elements = [b"a"] * 1_500_000
    for shape, message in (([1], "more than 1 elements"), ([1_500_000], "1500000 images in one request")):
        with bounded_memory(target):
            response = client.post(INFER, **v2_binary_bytes(elements, shape))
        assert response.status_code == 400 and message in response.json()["error"]
    assert_still_serves(client, photos, reference)


def test_json_values_are_counted_before_parsing(target: ServerProcess, client: httpx.Client) -> None:
    body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["QQ=="] * 1_000_000}]})
    with bounded_memory(target):
        response = client.post(INFER, content=body.encode())
    assert response.status_code == 400
    assert f"at most {1024 + 2 * MAX_BATCH}" in response.json()["error"]


def test_a_body_that_can_never_fit_the_memory_budget_is_413(client: httpx.Client, photos: Photos) -> None:
    """15 MB of JSON: its bytes and what parsing them takes exceed the whole 24 MB budget, so retrying is useless."""
    image = photos.jpeg["china"]
    encoded = __import__("base64").b64encode(image).decode()
    count = 15_000_000 // len(encoded)
    body = {"inputs": [{"name": "image", "shape": [count], "datatype": "BYTES", "data": [encoded] * count}]}
    response = client.post(INFER, content=json.dumps(body).encode())
    assert response.status_code == 413 and "retry-after" not in response.headers
    assert "budget for all requests together is 24000000" in response.json()["error"]


# --- image structure and decode work, charged before decoding -------------------------------------------------


HOSTILE_IMAGES = {
    "38-byte WebP declaring 6000x6600": (webp_bomb, 413, "pixels in 38 bytes"),
    "JPEG declaring 6000x6600 with 8x8 of data": (truncated_jpeg, 400, "truncated"),
    "PNG with 600,000 empty chunks": (lambda: chunk_flood_png(600_000), 413, "chunks"),
    "JPEG with 1.5 M comment segments": (lambda: comment_flood_jpeg(1_500_000), 413, "marker segments"),
}


@pytest.mark.parametrize("name", HOSTILE_IMAGES)
def test_hostile_images_are_refused_before_decoding(
    target: ServerProcess, client: httpx.Client, photos: Photos, reference: Reference, name: str
) -> None:
    build, status, message = HOSTILE_IMAGES[name]
    data = build()
    with bounded_memory(target):
        answers = [
            client.post(CLASSIFY, content=data),
            client.post(INFER, **v2_binary_bytes([data], [1])),
        ]
    for response in answers:
        assert response.status_code == status and message in response.json()["error"], response.text
    request = service_pb2.ModelInferRequest(model_name=TINY, raw_input_contents=[struct.pack("<I", len(data)) + data])
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    error = grpc_infer(target, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()
    assert_still_serves(client, photos, reference)


def test_four_requests_of_sixteen_bombs_at_once_leave_photos_served(
    target: ServerProcess, photos: Photos, reference: Reference
) -> None:
    files = [("files", (f"{i}.webp", webp_bomb(), "image/webp")) for i in range(MAX_BATCH)]
    bombs = target.in_background([lambda c: c.post(CLASSIFY, files=files)] * 4)
    photo = target.in_background([lambda c: c.post(CLASSIFY, content=photos.jpeg["china"], params={"top_k": 10})])
    for future in bombs:
        response = future.result(60)
        assert response.status_code == 413 and "pixels in 38 bytes" in response.json()["error"]
    reference.assert_answers(TINY, photos.jpeg["china"], photo[0].result(60))


def test_a_request_pays_for_its_pixels_together(client: httpx.Client) -> None:
    """Each 2000x2000 one-colour WebP alone is within the free 4 MP; two in one request are not."""
    small = webp_bomb((2000, 2000))
    assert client.post(CLASSIFY, content=small).status_code == 200
    files = [("files", (f"{i}.webp", small, "image/webp")) for i in range(2)]
    response = client.post(CLASSIFY, files=files)
    assert response.status_code == 413 and "the request's 2 images declare 8000000 pixels" in response.json()["error"]


def test_large_legal_images_leave_no_memory_behind(target: ServerProcess, photos: Photos, reference: Reference) -> None:
    """Four 33-megapixel photos at once (each decodes to 100 MB): served, and their memory goes back."""
    big = Image.fromarray(photos.arrays["china"]).resize((7000, 4700), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=80)
    data = buffer.getvalue()
    with bounded_memory(target, while_running=2**40):
        answers = target.in_background([lambda c: c.post(CLASSIFY, content=data, params={"top_k": 10})] * 4)
        for future in answers:
            reference.assert_answers(TINY, data, future.result(120))


# --- bodies over the limit are not read to their end ----------------------------------------------------------


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """What the server sends until it closes the connection (a reset counts as closed)."""
    sock.settimeout(30)
    received = b""
    while len(received) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_gets_413_and_the_connection_closes(target: ServerProcess, framing: str) -> None:
    length = "Content-Length: 1000000000000" if framing == "content-length" else "Transfer-Encoding: chunked"
    head = f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n{length}\r\n\r\n".encode()
    piece = b"\0" * 65536 if framing == "content-length" else b"10000\r\n" + b"\0" * 65536 + b"\r\n"
    with socket.create_connection(("127.0.0.1", target.port), timeout=30) as sock:
        sock.sendall(head)
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 64 * MB:  # the server stops reading long before: the send fails or blocks
                sock.settimeout(5)
                try:
                    sock.sendall(piece)
                except TimeoutError:
                    break
                sent += len(piece)
        assert sent < 64 * MB
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer.lower()


# --- shutdown answers requests already on their way -----------------------------------------------------------


def test_sigterm_answers_a_request_on_an_idle_keep_alive_connection(
    start_server, tiny_only_repository: Path, photos: Photos, reference: Reference
) -> None:
    server = start_server(tiny_only_repository)
    data = photos.jpeg["flower"]
    request = f"POST {CLASSIFY}?top_k=10 HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        stream = sock.makefile("rb")
        sock.sendall(request)
        first = read_response(stream)
        assert first[0] == 200
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_log(lambda record: record["message"] == "Shutting down")
        sock.sendall(request)  # on the idle keep-alive connection, once the server is shutting down
        status, headers, body = read_response(stream)
    assert status == 200 and headers.get("connection") == "close"
    reference.assert_answers(TINY, data, httpx.Response(status, content=body))
    assert server.process.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it drained on


def read_response(stream: io.BufferedReader) -> tuple[int, dict[str, str], bytes]:
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline().decode().strip()) != "":
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, stream.read(int(headers["content-length"]))


# --- clients cannot make the server log errors ----------------------------------------------------------------


def test_garbage_protobuf_is_invalid_argument_without_a_traceback(server: ServerProcess) -> None:
    garbage = b"\xff\xff\xff\xff\x0f" + np.random.default_rng(1).bytes(1000)
    answers = {key: grpc_infer(server, garbage, key) for key in (API_KEY, None)}
    assert answers[API_KEY].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in answers[API_KEY].details()
    assert answers[None].code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(server.grpc_url) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as streamed:
            list(stream(iter([service_pb2.ModelInferRequest(model_name=TINY)]), timeout=30))
    assert streamed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    server.wait_for_log(lambda r: r.get("grpc_method") == "ModelInfer" and r.get("grpc_code") == "UNAUTHENTICATED")
    assert not [r for r in server.log_records() if r["level"] in ("error", "critical") or "exception" in r]
    assert "Traceback" not in server.log()


def test_work_abandoned_during_preprocessing_logs_no_error(target: ServerProcess, photos: Photos) -> None:
    """Preprocessing on the pool, left behind by a passed deadline (v2's timeout of 1 ms) and by clients that
    disconnect while a broken image fails there: neither leaves an error or an unretrieved exception."""
    big = io.BytesIO()
    Image.fromarray(photos.arrays["china"]).resize((4000, 2700)).save(big, "JPEG", quality=80)
    broken = photos.jpeg["flower"][: len(photos.jpeg["flower"]) // 2]
    with target.client() as client:
        response = client.post(INFER, **v2_binary_bytes([big.getvalue(), broken], [2], timeout=1000))
    assert response.status_code == 504 and "during preprocessing" in response.json()["error"]
    form = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="%d.jpg"\r\n\r\n%s\r\n' % (i, data)
        for i, data in enumerate([big.getvalue(), broken, big.getvalue()])
    )
    form += b"--b--\r\n"
    request = (
        f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(form)}\r\n\r\n"
    ).encode() + form
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", target.port), timeout=30) as sock:
            sock.sendall(request)
    target.wait_for_log(lambda r: r.get("route") == "/v1/models/{name}:classify" and r.get("status") in (400, 499))
    with target.client() as client:
        assert client.post(CLASSIFY, content=big.getvalue()).status_code == 200  # the pool is free again
    assert "never retrieved" not in target.log()
    assert not [r for r in target.log_records() if r["level"] in ("error", "critical")]
