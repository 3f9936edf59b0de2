"""KServe v2 / Open Inference Protocol: schemas, request decoding and response encoding.

Supports JSON tensors and the binary tensor data extension (what ``tritonclient`` sends by default:
a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw tensor bytes). A model
takes exactly one of two inputs: ``input`` (FP32 ``[N, 3, S, S]``, already preprocessed) or
``image`` (BYTES ``[N]``, encoded images; base64 strings in JSON). It answers ``logits`` and
``probabilities`` (FP32 ``[N, C]``); without an ``outputs`` list it answers both.

The checks of tensors, images, outputs and the ``timeout`` parameter are the protocol's, not JSON's:
the gRPC codec (:mod:`niff_serve.grpc_codec`) calls the same functions.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError, WithJsonSchema

from niff_contract import describe_errors
from niff_serve.dataplane import InferenceRequest, InferenceResult
from niff_serve.errors import BadRequest, PayloadTooLarge
from niff_serve.json_tensors import json_values, max_json_values, parse_cost, placeholder_index, split_numeric_arrays
from niff_serve.request_body import Upload, parse_length

TENSOR_INPUT = "input"
IMAGE_INPUT = "image"
OUTPUTS = ("logits", "probabilities")
# Triton's names for what this server supports beyond the core protocol, over HTTP and gRPC alike.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")
HEADER_LENGTH = "Inference-Header-Content-Length"
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


# Every dimension is at least 1 (the served models take no empty tensors). The schema says so; decoding
# checks it, with the shape the model takes in its message (decode_tensor, decode_images), as over gRPC.
Dimension = Annotated[int, WithJsonSchema({"type": "integer", "minimum": 1})]


class RequestInput(BaseModel):
    name: str = Field(min_length=1)
    shape: list[Dimension] = Field(min_length=1, max_length=8)
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    # A str only as the placeholder of a numeric array cut out before parsing (json_tensors).
    data: list[Any] | str | None = None


class RequestOutput(BaseModel):
    name: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


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


def decode_request(
    body: bytes,
    header_length: str | None,
    model: str,
    shape: TensorShape,
    max_json_bytes: int,
    claim: Callable[[int], None],
) -> DecodedRequest:
    """Validate an infer request against the model; every problem is a 400 saying what is wrong.

    The JSON part may be at most ``max_json_bytes``; what parsing it may cost beyond its numeric arrays
    is claimed through ``claim`` first (the request's memory budget).
    """
    header, binary = _split(body, header_length)
    if len(header) > max_json_bytes:
        raise PayloadTooLarge(
            f"the JSON part of the request is {len(header)} bytes; the limit is {max_json_bytes} "
            "(send large tensors with the binary data extension)"
        )
    split = split_numeric_arrays(header)
    values, most = json_values(split.remainder), max_json_values(shape.max_batch_size)
    if values > most:
        raise BadRequest(
            f"the JSON part of the request holds {values} values; an inference request for this model has at most "
            f"{most} (numeric tensor data does not count)"
        )
    claim(parse_cost(split.remainder))
    try:
        request = InferRequest.model_validate_json(split.remainder)
    except ValidationError as exc:
        raise BadRequest(f"invalid inference request: {describe_errors(exc.errors())}") from None
    if len(request.inputs) != 1:
        raise BadRequest(f"give exactly one input ({TENSOR_INPUT!r} or {IMAGE_INPUT!r}), not {len(request.inputs)}")
    item = request.inputs[0]
    raw = _binary_part(item, binary)
    numeric = None if raw is not None else placeholder_index(item.data, split)
    if isinstance(item.data, str) and numeric is None:
        raise BadRequest(f"input {item.name!r}: 'data' must be an array")
    if item.name == TENSOR_INPUT:
        numbers = None if numeric is None else split.numbers(numeric)
        tensor, images = decode_tensor(item.datatype, item.shape, raw, numbers, shape), None
    elif item.name == IMAGE_INPUT:
        if numeric is not None:
            raise BadRequest(f"input {IMAGE_INPUT!r}: 'data' must hold base64 strings, not numbers")
        count = image_count(item.datatype, item.shape, shape.max_batch_size)
        elements = unpack_bytes(raw, count) if raw is not None else _base64_elements(item.data or [], count)
        tensor, images = None, [Upload(data) for data in elements]
    else:
        raise unknown_input(item.name, shape)
    timeout_s = timeout_parameter(request.parameters.get("timeout"))
    inference = InferenceRequest(model, tensor, images, id=request.id, timeout_s=timeout_s)
    return DecodedRequest(inference, _requested_outputs(request))


def unknown_input(name: str, shape: TensorShape) -> BadRequest:
    return BadRequest(
        f"unknown input {name!r}: send {TENSOR_INPUT!r} (FP32 [N, 3, {shape.size}, {shape.size}]) "
        f"or {IMAGE_INPUT!r} (BYTES [N], encoded images)"
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    length = parse_length(header_length)
    if length is None or not 0 < length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {header_length!r} does not fit the {len(body)}-byte body")
    return body[:length], body[length:]


def _binary_part(item: RequestInput, binary: bytes) -> bytes | None:
    size = item.parameters.get("binary_data_size")
    if size is None:
        if binary:
            raise BadRequest(f"{len(binary)} bytes of binary data follow the header but no input claims them")
        if item.data is None:
            raise BadRequest(f"input {item.name!r} has neither 'data' nor binary data")
        return None
    if item.data is not None:
        raise BadRequest(f"input {item.name!r} has both 'data' and binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise BadRequest(f"input {item.name!r}: binary_data_size {size!r} but {len(binary)} binary bytes were sent")
    return binary


def decode_tensor(
    datatype: str, dims: list[int], raw: bytes | None, numbers: np.ndarray | None, shape: TensorShape
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


def _base64_elements(data: list[Any], count: int) -> list[bytes]:
    values = data if all(isinstance(value, str) for value in data) else _flat(data, count)
    if len(values) != count:
        raise element_count_error(len(values), count)
    elements = []
    for index, value in enumerate(values):
        try:
            elements.append(base64.b64decode(value, validate=True))
        except (binascii.Error, TypeError, ValueError):
            raise BadRequest(f"input {IMAGE_INPUT!r}: element {index} is not a base64 string") from None
    return elements


def _flat(data: list[Any], count: int) -> list[Any]:
    """``[[a], [b]]`` (shape [N, 1]) as ``[a, b]``; anything else as it is, for the count check to refuse."""
    if len(data) == count and all(isinstance(value, list) and len(value) == 1 for value in data):
        return [value[0] for value in data]
    return data


def _requested_outputs(request: InferRequest) -> dict[str, bool]:
    """Output name to whether it goes back as binary data."""
    default_binary = _flag(request.parameters, "binary_data_output", False)
    if request.outputs is None:
        return dict.fromkeys(OUTPUTS, default_binary)
    outputs = {}
    for output in request.outputs:
        check_output(output.name, output.parameters)
        outputs[output.name] = _flag(output.parameters, "binary_data", default_binary)
    return outputs


def check_output(name: str, parameters: Collection[str]) -> None:
    """A requested output must be one this model answers, without the classification extension."""
    if name not in OUTPUTS:
        raise BadRequest(f"unknown output {name!r}; this model answers {', '.join(OUTPUTS)}")
    if "classification" in parameters:
        raise BadRequest("the classification extension is not supported; use POST /v1/models/{name}:classify")


def _flag(parameters: dict[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {name!r} must be true or false")
    return value


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


def encode_response(result: InferenceResult, requested: dict[str, bool]) -> tuple[bytes, dict[str, str]]:
    """The body and headers answering a request: plain JSON, or JSON followed by binary tensors."""
    outputs, raw_parts = [], []
    for name, binary in requested.items():
        array = output_tensor(result, name)
        output = ResponseOutput(name=name, datatype="FP32", shape=list(array.shape))
        if binary:
            output.parameters = {"binary_data_size": array.nbytes}
            raw_parts.append(array.tobytes())
        else:
            output.data = array.ravel().tolist()
        outputs.append(output)
    response = InferResponse(model_name=result.model, model_version=result.version, id=result.id, outputs=outputs)
    header = response.model_dump_json(exclude_none=True).encode()
    if not raw_parts:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(raw_parts), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
