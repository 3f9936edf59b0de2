"""Hostile and unlucky clients against a real server: memory bombs, huge and slow headers, too many
connections, concurrent large bodies, keep-alive timing. Every loop is bounded and targets 127.0.0.1."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from polling import wait_until

from .conftest import TINY, Photos, ServerProcess

CLASSIFY = f"/v1/models/{TINY}:classify"
INFER = f"/v2/models/{TINY}/infer"
HEADER_TIMEOUT_S = 2.0


def peak_rss_bytes(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def thin_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def v2_bytes_request(images: list[bytes]) -> dict:
    """A v2 request carrying encoded images in a binary BYTES tensor, as tritonclient sends it."""
    raw = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return {"content": header + raw, "headers": {"Inference-Header-Content-Length": str(len(header))}}


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not within ``timeout``)."""
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open for {timeout} s")


@pytest.fixture(scope="module")
def guarded(start_server, tiny_only_repository: Path) -> ServerProcess:
    """Short header timeout, small memory budget for bodies: the limits are reachable in a test."""
    return start_server(
        tiny_only_repository,
        *("--header-timeout-s", str(HEADER_TIMEOUT_S), "--max-upload-bytes", "2000000"),
        *("--max-body-memory-bytes", "3000000", "--max-json-bytes", "200000", "--keep-alive-timeout-s", "3"),
    )


@pytest.fixture
def raw(guarded: ServerProcess) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=30)
    yield sock
    sock.close()


@pytest.mark.parametrize("size", [(1, 100_000), (4_000_000, 1), (1, 4_000_000), (100_000, 1), (21, 1), (3, 64)])
def test_thin_images_are_refused_from_their_header(guarded: ServerProcess, size: tuple[int, int]) -> None:
    """A 1xN PNG is a few kB; resizing its short side first would make it resize x resize*N pixels."""
    data = thin_png(*size)
    before = peak_rss_bytes(guarded.process.pid)
    with guarded.client() as client:
        rest = client.post(CLASSIFY, content=data)
        v2 = client.post(INFER, **v2_bytes_request([data]))
    for response in (rest, v2):
        assert response.status_code == 422, response.text
        assert f"{size[0]}x{size[1]}" in response.json()["error"] and "the limit is 20:1" in response.json()["error"]
    assert peak_rss_bytes(guarded.process.pid) - before < 100 * 2**20


def test_an_image_at_the_aspect_limit_is_classified(guarded: ServerProcess, photos: Photos) -> None:
    wide = Image.fromarray(photos.arrays["china"]).resize((640, 32))
    buffer = io.BytesIO()
    wide.save(buffer, "PNG")
    with guarded.client() as client:
        assert client.post(CLASSIFY, content=buffer.getvalue()).status_code == 200


def test_the_pixel_bomb_is_still_413(guarded: ServerProcess) -> None:
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, "PNG")
    with guarded.client() as client:
        response = client.post(CLASSIFY, content=buffer.getvalue())
    assert response.status_code == 413 and "pixels" in response.json()["error"]


def test_a_huge_header_is_431_and_does_not_stall_others(guarded: ServerProcess, raw: socket.socket) -> None:
    raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ")
    chunk = b"a" * 65536
    try:
        for _ in range(16):  # 1 MiB of one header, unless the server hangs up first
            raw.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = read_until_closed(raw, timeout=10)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"exceed 32768 bytes" in answer
    with guarded.client() as client:
        assert client.get("/healthz").status_code == 200


def test_a_large_header_block_in_one_packet_is_431(guarded: ServerProcess) -> None:
    with guarded.client() as client:
        response = client.get("/healthz", headers={f"X-Field-{i}": "v" * 1000 for i in range(40)})
    assert response.status_code == 431 and "exceed" in response.json()["error"]


def test_trickled_headers_get_408_at_the_header_timeout(guarded: ServerProcess, raw: socket.socket) -> None:
    started = time.monotonic()
    raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and then nothing: the blank line never comes
    answer = read_until_closed(raw, timeout=HEADER_TIMEOUT_S + 20)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9


def test_silent_connections_are_closed_while_others_are_served(guarded: ServerProcess) -> None:
    silent = []
    try:
        for _ in range(1100):
            silent.append(socket.create_connection(("127.0.0.1", guarded.port), timeout=30))
        with guarded.client() as client:
            for _ in range(5):
                assert client.get("/v2/health/ready").status_code == 200
        for sock in silent:
            assert read_until_closed(sock, timeout=HEADER_TIMEOUT_S + 30) == b""
    finally:
        for sock in silent:
            sock.close()


def test_keep_alive_timeout_is_the_setting(guarded: ServerProcess) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=30)
    try:
        for _ in range(2):  # the second request reuses the connection
            connection.request("GET", "/healthz")
            assert connection.getresponse().read() == b'{"status":"ok"}'
        idle_since = time.monotonic()
        assert read_until_closed(connection.sock, timeout=30) == b""
        assert time.monotonic() - idle_since >= 3 * 0.9  # --keep-alive-timeout-s 3, not the header timeout
    finally:
        connection.close()


def test_connections_beyond_the_limit_get_503(start_server, tiny_only_repository: Path) -> None:
    server = start_server(tiny_only_repository, "--max-connections", "4")
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(4)]
    try:
        for _ in range(30):
            extra = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            answer = read_until_closed(extra, timeout=10)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"too many open connections" in answer
    finally:
        for sock in held:
            sock.close()
    with server.client() as client:  # freed slots serve again
        assert client.get("/healthz").status_code == 200
    refusals = server.wait_for_log(lambda record: "beyond the limit of 4 open connections" in record["message"])
    assert len(refusals) == 1  # a burst is one line, not one per connection


def test_bodies_beyond_the_memory_budget_get_503(guarded: ServerProcess, raw: socket.socket) -> None:
    """A slow 1.5 MB upload holds its claim; a second one does not fit the 3 MB budget until it ends."""
    raw.sendall(f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Length: 1500000\r\n\r\n".encode() + b"\0" * 1000)
    with guarded.client() as client:

        def refused() -> httpx.Response | None:  # the first request's claim is made once its headers are read
            response = client.post(CLASSIFY, content=b"\0" * 1_600_000)
            return response if response.status_code == 503 else None

        second = wait_until(refused, "a second large upload was never refused while the first held the budget")
        assert "retry" in second.json()["error"] and second.headers["retry-after"]
        raw.sendall(b"\0" * 1_499_000)
        assert b"HTTP/1.1 415 " in raw.recv(65536)  # the first upload is answered (not an image)
        third = client.post(CLASSIFY, content=b"\0" * 1_600_000)
        assert third.status_code == 415  # the budget is free again


def test_v2_json_has_its_own_size_limit(guarded: ServerProcess) -> None:
    values = np.random.default_rng(0).standard_normal(3 * 32 * 32 * 8).tolist()
    body = {"inputs": [{"name": "input", "shape": [8, 3, 32, 32], "datatype": "FP32", "data": values}]}
    with guarded.client() as client:
        response = client.post(INFER, content=json.dumps(body).encode())
    assert response.status_code == 413 and "binary data extension" in response.json()["error"]


def test_nested_and_flat_json_tensors_answer_alike(guarded: ServerProcess, photos: Photos) -> None:
    tensor = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    answers = []
    with guarded.client() as client:
        for data in (tensor.ravel().tolist(), tensor.tolist()):
            body = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": data}]}
            response = client.post(INFER, content=json.dumps(body).encode())
            assert response.status_code == 200, response.text
            answers.append(response.json()["outputs"][0]["data"])
        image = base64.b64encode(photos.jpeg["flower"]).decode()
        body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}]}
        assert client.post(INFER, content=json.dumps(body).encode()).status_code == 200
    np.testing.assert_array_equal(answers[0], answers[1])


@pytest.mark.parametrize(
    ("headers", "parameters", "status"),
    [
        ({"Inference-Header-Content-Length": "²".encode("latin-1")}, {}, 400),  # "²".isdigit(), yet not int()
        ({}, {"timeout": 10**400}, 200),  # longer than any deadline: the server's own deadline applies
    ],
)
def test_odd_numbers_in_v2_requests(guarded: ServerProcess, headers: dict, parameters: dict, status: int) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}]}
    body["parameters"] = parameters
    with guarded.client() as client:
        response = client.post(INFER, content=json.dumps(body).encode(), headers=headers)
    assert response.status_code == status, response.text
