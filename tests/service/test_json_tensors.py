"""Numeric tensors in v2 JSON, in-process: same numbers as a JSON parser gives, without its memory."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from niff_serve.core.errors import BadRequest
from niff_serve.core.protocol_v2 import TensorShape
from niff_serve.http.json_tensors import parse_numeric_array, placeholder_index, split_numeric_arrays
from niff_serve.http.v2_json import decode_request

pytestmark = pytest.mark.fast

SHAPE = TensorShape(size=32, num_classes=10, max_batch_size=8)


def request(data: object, **extra: object) -> bytes:
    item = {"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": data}
    return json.dumps({"id": "x", "inputs": [item], **extra}).encode()


def decode(body: bytes) -> np.ndarray:
    decoded = decode_request(body, None, "m", SHAPE, max_json_bytes=1 << 30, claim=lambda size: None)
    assert decoded.inference.tensor is not None
    return decoded.inference.tensor


@pytest.fixture(scope="module")
def tensor() -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2, 3, 32, 32)) * 10.0 ** rng.integers(-30, 30, (2, 3, 32, 32))
    return values.astype(np.float32)


@pytest.mark.parametrize("layout", ["flat", "nested", "spaced"])
def test_numbers_equal_what_a_json_parser_gives(tensor: np.ndarray, layout: str) -> None:
    data = tensor.ravel().tolist() if layout == "flat" else tensor.tolist()
    body = request(data)
    if layout == "spaced":
        body = json.dumps(json.loads(body), indent=3).encode()
    expected = np.asarray(json.loads(body)["inputs"][0]["data"], dtype=np.float32).reshape(tensor.shape)
    np.testing.assert_array_equal(decode(body), expected)


def test_strings_that_mention_data_are_left_alone() -> None:
    text = json.dumps({"id": '"data": [1, 2]', "inputs": [{"data": [3, 4], "note": "\\"}]}).encode()
    split = split_numeric_arrays(text)
    assert len(split.spans) == 1
    parsed = json.loads(split.remainder)
    assert parsed["id"] == '"data": [1, 2]'
    index = placeholder_index(parsed["inputs"][0]["data"], split)
    assert index == 0 and split.numbers(index).tolist() == [3, 4]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "2 values for shape"),
        (["1"] * 12, "data must be numbers"),
        ([[True]] * 12, "data must be numbers"),
        # Values that are not numbers become Python objects when parsed: counted before, bounded by the batch.
        (["1"] * 6144, "holds 6162 values; an inference request for this model has at most 1040"),
        ([[]], "0 values for shape"),
        ("\x00niff-numeric-data:7", "'data' must be an array"),
    ],
)
def test_bad_numbers_are_400(data: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode(request(data))


def test_malformed_number_text_is_not_numbers() -> None:
    assert parse_numeric_array(b"[1,,2]") is None
    assert parse_numeric_array(b"[1, 2e]") is None
    np.testing.assert_array_equal(parse_numeric_array(b"[[1 ,2],\n[3]]"), [1, 2, 3])


def test_decoding_a_large_json_tensor_takes_little_more_than_the_text(tensor: np.ndarray) -> None:
    """A JSON parser needs 20-60x the text (a Python float per number, a list per nesting level)."""
    body = request([[[[float(v)] for v in row] for row in plane] for plane in tensor.reshape(6, 32, 32)])
    tracemalloc.start()
    try:
        decode(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(body)


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest) across exec.
_MEASURE = """
import json, re, sys
from niff_serve.http.json_tensors import parse_cost, split_numeric_arrays
from niff_serve.http.v2_json import InferRequest
def peak():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
text = split_numeric_arrays(open(sys.argv[1], "rb").read()).remainder
before = peak()
InferRequest.model_validate_json(text)
print(json.dumps({"grew": peak() - before, "cost": parse_cost(text)}))
"""


@pytest.mark.parametrize("kind", ["deep lists", "objects", "strings"])
def test_parse_cost_bounds_what_parsing_takes(kind: str, tmp_path: Path) -> None:
    """Measured in a fresh process, so the peak resident size is the parse's own."""
    n = 200_000
    data = {"deep lists": [[[[[[[[None]]]]]]]] * (n // 4), "objects": [{"a": {"b": []}}] * n, "strings": ["0"] * n}
    path = tmp_path / "request.json"
    item = {"name": "image", "shape": [1], "datatype": "BYTES", "data": data[kind]}
    path.write_bytes(json.dumps({"inputs": [item]}).encode())
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert 0 < measured["grew"] <= measured["cost"]
