"""Hostile and broken requests against a real server: each is a 4xx with a JSON reason, never a 5xx or a crash."""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from .conftest import TINY, Photos, ServerProcess

CLASSIFY = f"/v1/models/{TINY}:classify"
INFER = f"/v2/models/{TINY}/infer"


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 20000x20000 PNG: 48 kB on the wire, 400 megapixels (1.2 GB as RGB) once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def warning_bomb() -> bytes:
    """A 10000x10000 PNG: above Pillow's warning threshold (89.5 megapixels), below its hard limit."""
    buffer = io.BytesIO()
    Image.new("1", (10000, 10000)).save(buffer, "PNG")
    return buffer.getvalue()


def _chunks(size: int) -> Iterator[bytes]:
    for _ in range(size // 65536):
        yield os.urandom(65536)


def _v2(request: dict[str, Any], binary: bytes = b"", header_length: str | None = None) -> dict[str, Any]:
    header = json.dumps(request).encode()
    headers = {"Inference-Header-Content-Length": header_length or str(len(header))} if binary or header_length else {}
    return {"method": "POST", "url": INFER, "content": header + binary, "headers": headers}


def _fp32(**changes: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", **changes}


Case = tuple[int, str, Callable[[Photos, bytes], dict[str, Any]]]

CASES: dict[str, Case] = {
    "empty body": (400, "body is empty", lambda p, b: {"method": "POST", "url": CLASSIFY, "content": b""}),
    "truncated jpeg": (
        400,
        "JPEG image is truncated or corrupt",
        lambda p, b: {"method": "POST", "url": CLASSIFY, "content": p.jpeg["china"][:20000]},
    ),
    "text as image": (
        415,
        "not a JPEG, PNG, WebP, BMP or TIFF image",
        lambda p, b: {"method": "POST", "url": CLASSIFY, "content": b"hello, I am not an image\n" * 40},
    ),
    "gif": (415, "not a JPEG", lambda p, b: {"method": "POST", "url": CLASSIFY, "content": p.encode("flower", "GIF")}),
    "png bomb": (413, "more than", lambda p, b: {"method": "POST", "url": CLASSIFY, "content": b}),
    "classify with GET": (405, f"Method Not Allowed: GET {CLASSIFY}", lambda p, b: {"method": "GET", "url": CLASSIFY}),
    "classify an unknown model with GET": (
        405,
        "Method Not Allowed",
        lambda p, b: {"method": "GET", "url": "/v1/models/x:classify"},
    ),
    "oversize body": (
        413,
        "the limit is 2000000",
        lambda p, b: {"method": "POST", "url": CLASSIFY, "content": os.urandom(2_500_000)},
    ),
    "oversize chunked body": (
        413,
        "exceeds the limit of 2000000 bytes",
        lambda p, b: {"method": "POST", "url": CLASSIFY, "content": _chunks(3_000_000)},
    ),
    "compressed body": (
        415,
        "Content-Encoding 'gzip' is not supported",
        lambda p, b: {
            "method": "POST",
            "url": CLASSIFY,
            "content": gzip.compress(p.jpeg["china"]),
            "headers": {"Content-Encoding": "gzip"},
        },
    ),
    "multipart without files": (
        400,
        "no file parts",
        lambda p, b: {
            "method": "POST",
            "url": CLASSIFY,
            "content": b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n--b--\r\n',
            "headers": {"Content-Type": "multipart/form-data; boundary=b"},
        },
    ),
    "multipart without boundary": (
        400,
        "malformed multipart body",
        lambda p, b: {
            "method": "POST",
            "url": CLASSIFY,
            "content": b"--x\r\n",
            "headers": {"Content-Type": "multipart/form-data"},
        },
    ),
    "too many files": (
        400,
        "Maximum number of files is 8",
        lambda p, b: {"method": "POST", "url": CLASSIFY, "files": [("f", p.jpeg["china"])] * 9},
    ),
    "a text file among images": (
        415,
        "image 1 ('notes.txt'): the data is not",
        lambda p, b: {
            "method": "POST",
            "url": CLASSIFY,
            "files": [("f", ("a.jpg", p.jpeg["china"])), ("f", ("notes.txt", b"just text"))],
        },
    ),
    "top_k zero": (422, "top_k", lambda p, b: {"method": "POST", "url": CLASSIFY + "?top_k=0", "content": b"x"}),
    "top_k text": (422, "top_k", lambda p, b: {"method": "POST", "url": CLASSIFY + "?top_k=many", "content": b"x"}),
    "top_k above classes": (
        400,
        "the model has 10 classes",
        lambda p, b: {"method": "POST", "url": CLASSIFY + "?top_k=11", "content": p.jpeg["china"]},
    ),
    "unknown model": (
        404,
        "unknown model 'resnet'",
        lambda p, b: {"method": "POST", "url": "/v1/models/resnet:classify"},
    ),
    "wrong method": (405, "Method Not Allowed", lambda p, b: {"method": "PUT", "url": "/v2/health/live"}),
    "v2 invalid json": (
        400,
        "invalid inference request",
        lambda p, b: {"method": "POST", "url": INFER, "content": b"{"},
    ),
    "v2 no inputs": (400, "inputs", lambda p, b: _v2({"inputs": []})),
    "v2 two inputs": (400, "exactly one input", lambda p, b: _v2({"inputs": [_fp32(data=[0]), _fp32(data=[0])]})),
    "v2 unknown input": (400, "unknown input 'pixels'", lambda p, b: _v2({"inputs": [_fp32(name="pixels", data=[0])]})),
    "v2 no data": (400, "neither 'data' nor binary data", lambda p, b: _v2({"inputs": [_fp32()]})),
    "v2 too few values": (400, "3 values for shape", lambda p, b: _v2({"inputs": [_fp32(data=[1, 2, 3])]})),
    "v2 strings as numbers": (400, "data must be numbers", lambda p, b: _v2({"inputs": [_fp32(data=["a"] * 12)]})),
    "v2 many values that are not numbers": (
        400,
        "holds 3088 values; an inference request for this model has at most",
        lambda p, b: _v2({"inputs": [_fp32(data=["a"] * 3072)]}),
    ),
    "v2 ragged data": (400, "3 values for shape", lambda p, b: _v2({"inputs": [_fp32(data=[[1, 2], [3]])]})),
    "v2 binary size mismatch": (
        400,
        "binary_data_size 12288 but 100 binary bytes",
        lambda p, b: _v2({"inputs": [_fp32(parameters={"binary_data_size": 12288})]}, b"\0" * 100),
    ),
    "v2 header length too long": (
        400,
        "does not fit",
        lambda p, b: _v2({"inputs": [_fp32(data=[0])]}, b"\0" * 4, header_length="999999"),
    ),
    "v2 bad base64": (
        400,
        "element 0 is not a base64 string",
        lambda p, b: _v2({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}),
    ),
    "v2 bytes overrun": (
        400,
        "overruns the binary data",
        lambda p, b: _v2(
            {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]},
            b"\xff\x00\x00\x00abcd",
        ),
    ),
    "v2 bytes image is text": (
        415,
        "image 0: the data is not",
        lambda p, b: _v2({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}),
    ),
    "v2 unknown output": (
        400,
        "unknown output 'features'",
        lambda p, b: _v2({"inputs": [_fp32(data=[0] * 3072)], "outputs": [{"name": "features"}]}),
    ),
    "v2 classification extension": (
        400,
        "classification extension is not supported",
        lambda p, b: _v2(
            {"inputs": [_fp32(data=[0] * 3072)], "outputs": [{"name": "logits", "parameters": {"classification": 3}}]}
        ),
    ),
    "v2 bad timeout": (
        400,
        "'timeout' must be a positive number",
        lambda p, b: _v2({"inputs": [_fp32(data=[0] * 3072)], "parameters": {"timeout": -5}}),
    ),
}


@pytest.fixture(scope="module")
def answers(server: ServerProcess, photos: Photos, bomb: bytes) -> dict[str, httpx.Response]:
    """Every case sent once, each on a fresh connection (the server may close one after an error)."""
    responses = {}
    for case, (_, _, build) in CASES.items():
        with server.client() as client:
            responses[case] = client.request(**build(photos, bomb))
    return responses


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_4xx_with_a_reason(answers: dict[str, httpx.Response], case: str) -> None:
    status, message, _ = CASES[case]
    response = answers[case]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


def test_no_5xx_and_still_ready_after_the_bad_input_suite(
    answers: dict[str, httpx.Response], server: ServerProcess, photos: Photos, client: httpx.Client
) -> None:
    assert all(response.status_code < 500 for response in answers.values())
    text = httpx.get(f"{server.url}/metrics").text
    statuses = {
        line.split('status="')[1][0] for line in text.splitlines() if line.startswith("niff_http_requests_total")
    }
    assert statuses and "5" not in statuses
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert client.post(CLASSIFY, content=photos.jpeg["flower"]).status_code == 200
    assert server.process.poll() is None


def test_pillows_warnings_reach_the_log_as_json(server: ServerProcess, warning_bomb: bytes) -> None:
    with server.client() as client:
        response = client.post(CLASSIFY, content=warning_bomb)
    assert response.status_code == 413 and "10000x10000 = 100000000 pixels" in response.json()["error"]
    [record, *_] = server.wait_for_log(lambda r: "DecompressionBombWarning" in r["message"])
    assert record["logger"] == "py.warnings" and record["level"] == "warning"
    lines = server.log().splitlines()
    assert lines and all(line.startswith("{") and json.loads(line) for line in lines)
