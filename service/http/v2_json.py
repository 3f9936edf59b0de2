"""KServe v2 over HTTP: the JSON request and response bodies, and the binary tensor data extension.

With the extension (what ``tritonclient`` sends by default) a body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw tensor bytes; BYTES elements in JSON are base64
strings. Without an ``outputs`` list a response answers every output. The tensor rules are the protocol's
(:mod:`niff_serve.core.protocol_v2`), shared with gRPC.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError, WithJsonSchema

from niff_contract import describe_errors
from niff_serve.core.body_budget import Upload, parse_length
from niff_serve.core.errors import BadRequest, PayloadTooLarge
from niff_serve.core.inference import InferenceRequest, InferenceResult
from niff_serve.core.protocol_v2 import (
    IMAGE_INPUT,
    OUTPUTS,
    TENSOR_INPUT,
    DecodedRequest,
    TensorShape,
    check_output,
    decode_tensor,
    element_count_error,
    image_count,
    only_input,
    output_tensor,
    timeout_parameter,
    unknown_input,
    unpack_bytes,
)
from niff_serve.http.json_tensors import (
    json_values,
    max_json_values,
    parse_cost,
    placeholder_index,
    split_numeric_arrays,
)

HEADER_LENGTH = "Inference-Header-Content-Length"


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
    item = only_input(request.inputs)
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


def _flag(parameters: dict[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {name!r} must be true or false")
    return value


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
