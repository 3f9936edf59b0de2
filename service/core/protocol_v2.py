"""KServe v2 / Open Inference Protocol: what a request may hold and a response answers, for every transport.

A model takes exactly one of two inputs: ``input`` (FP32 ``[N, 3, S, S]``, already preprocessed) or
``image`` (BYTES ``[N]``, encoded images). It answers ``logits`` and ``probabilities`` (FP32 ``[N, C]``).
The checks of tensors, images, outputs and the ``timeout`` parameter live here once; the JSON codec
(:mod:`niff_serve.http.v2_json`) and the gRPC codec (:mod:`niff_serve.grpc.codec`) call them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from pydantic import BaseModel

from niff_serve.core.errors import BadRequest
from niff_serve.core.inference import InferenceRequest, InferenceResult

Item = TypeVar("Item")
TENSOR_INPUT = "input"


IMAGE_INPUT = "image"


OUTPUTS = ("logits", "probabilities")


# Triton's names for what this server supports beyond the core protocol, over HTTP and gRPC alike.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")


# The longest per-request timeout honoured; the server's own request deadline caps it anyway.
_MAX_TIMEOUT_US = 10**12


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelReady(BaseModel):
    name: str
    ready: bool


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


@dataclass(frozen=True)
class TensorShape:
    """What one model accepts: ``[N, 3, size, size]`` float32 with N up to ``max_batch_size``, and
    ``num_classes`` outputs."""

    size: int
    num_classes: int
    max_batch_size: int


@dataclass(frozen=True)
class DecodedRequest:
    """The protocol-independent request, and which outputs go back how (name: as binary data)."""

    inference: InferenceRequest
    outputs: dict[str, bool]


def model_metadata(name: str, version: str, platform: str, shape: TensorShape) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        versions=[version],
        platform=platform,
        inputs=[
            TensorMetadata(name=TENSOR_INPUT, datatype="FP32", shape=[-1, 3, shape.size, shape.size]),
            TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1]),
        ],
        outputs=[TensorMetadata(name=n, datatype="FP32", shape=[-1, shape.num_classes]) for n in OUTPUTS],
    )


def only_input(inputs: Sequence[Item]) -> Item:
    """The request's one input: a model takes exactly one."""
    if len(inputs) != 1:
        raise BadRequest(f"give exactly one input ({TENSOR_INPUT!r} or {IMAGE_INPUT!r}), not {len(inputs)}")
    return inputs[0]


def unknown_input(name: str, shape: TensorShape) -> BadRequest:
    return BadRequest(
        f"unknown input {name!r}: send {TENSOR_INPUT!r} (FP32 [N, 3, {shape.size}, {shape.size}]) "
        f"or {IMAGE_INPUT!r} (BYTES [N], encoded images)"
    )


def decode_tensor(
    datatype: str, dims: list[int], raw: bytes | memoryview | None, numbers: np.ndarray | None, shape: TensorShape
) -> np.ndarray:
    """The ``input`` tensor from its little-endian bytes (``raw``) or from its values (``numbers``)."""
    expected = [3, shape.size, shape.size]
    if datatype != "FP32":
        raise BadRequest(f"input {TENSOR_INPUT!r} must be FP32, not {datatype}")
    if len(dims) != 4 or dims[1:] != expected or dims[0] < 1:
        raise BadRequest(
            f"input {TENSOR_INPUT!r} has shape {dims}; this model takes [N, {', '.join(map(str, expected))}]"
        )
    count = math.prod(dims)
    if raw is not None:
        if len(raw) != count * 4:
            raise BadRequest(f"input {TENSOR_INPUT!r}: {len(raw)} bytes for shape {dims} ({count * 4} expected)")
        tensor = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        tensor = numbers
        if tensor is None:
            raise BadRequest(f"input {TENSOR_INPUT!r}: data must be numbers (flat or nested arrays)")
        if tensor.size != count:
            raise BadRequest(f"input {TENSOR_INPUT!r}: {tensor.size} values for shape {dims} ({count} expected)")
    if not np.isfinite(tensor).all():
        raise BadRequest(f"input {TENSOR_INPUT!r} contains NaN or infinite values")
    return tensor.reshape(dims)


def image_count(datatype: str, dims: list[int], max_batch_size: int) -> int:
    """How many images the ``image`` input declares, checked before a single element is read: the element
    count is what unpacking costs, so it is bounded by the model's batch size first."""
    if datatype != "BYTES":
        raise BadRequest(f"input {IMAGE_INPUT!r} must be BYTES, not {datatype}")
    if not dims or dims[0] < 1 or math.prod(dims) != dims[0]:
        raise BadRequest(f"input {IMAGE_INPUT!r} has shape {dims}; it takes [N] or [N, 1]")
    if dims[0] > max_batch_size:
        raise BadRequest(f"{dims[0]} images in one request; this model takes at most {max_batch_size}")
    return dims[0]


def element_count_error(found: int | str, count: int) -> BadRequest:
    return BadRequest(f"input {IMAGE_INPUT!r}: {found} elements for shape [{count}]")


def unpack_bytes(raw: bytes, count: int) -> list[bytes]:
    """Triton's BYTES serialization (each element a little-endian uint32 length, then the bytes): exactly
    ``count`` elements; reading stops as soon as the data holds more."""
    elements, offset = [], 0
    while offset < len(raw):
        if len(elements) == count:
            raise element_count_error(f"more than {count}", count)
        if offset + 4 > len(raw):
            raise BadRequest(f"input {IMAGE_INPUT!r}: binary data ends inside an element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"input {IMAGE_INPUT!r}: element of {length} bytes overruns the binary data")
        elements.append(raw[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise element_count_error(len(elements), count)
    return elements


def check_output(name: str, parameters: Collection[str]) -> None:
    """A requested output must be one this model answers, without the classification extension."""
    if name not in OUTPUTS:
        raise BadRequest(f"unknown output {name!r}; this model answers {', '.join(OUTPUTS)}")
    if "classification" in parameters:
        raise BadRequest("the classification extension is not supported; use POST /v1/models/{name}:classify")


def timeout_parameter(value: object) -> float | None:
    """Triton's per-request ``timeout`` parameter (microseconds), in seconds."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadRequest("parameter 'timeout' must be a positive number of microseconds")
    return min(value, _MAX_TIMEOUT_US) / 1e6


def output_tensor(result: InferenceResult, name: str) -> np.ndarray:
    """One of :data:`OUTPUTS` as contiguous little-endian float32, ready to send."""
    values = result.logits if name == "logits" else result.probabilities
    return np.ascontiguousarray(values, dtype="<f4")
