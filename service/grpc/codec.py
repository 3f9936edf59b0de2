"""KServe v2 over gRPC: ``ModelInferRequest`` in, ``ModelInferResponse`` out, with the HTTP path's checks.

The messages are Triton's compiled protobufs (``tritonclient.grpc.service_pb2``). A tensor arrives
either in ``raw_input_contents`` (what ``tritonclient.grpc`` sends: little-endian bytes, BYTES
elements each prefixed by a uint32 length) or in the input's typed ``contents``; both decode through
the same functions as the HTTP protocol (:mod:`niff_serve.core.protocol_v2`), so the same request is
refused or answered the same way on both. Outputs always go back in ``raw_output_contents``, as
Triton does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from niff_serve.core.body_budget import Upload
from niff_serve.core.errors import BadRequest
from niff_serve.core.inference import InferenceRequest, InferenceResult
from niff_serve.core.protocol_v2 import (
    IMAGE_INPUT,
    OUTPUTS,
    TENSOR_INPUT,
    DecodedRequest,
    ModelMetadata,
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
from niff_serve.grpc.shared_memory import SharedMemoryRegions

# Where each input's values go in ``InferTensorContents`` when they are not sent raw.
_CONTENTS_FIELD = {TENSOR_INPUT: "fp32_contents", IMAGE_INPUT: "bytes_contents"}
_REQUEST_FIELDS = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name
_INPUT_FIELDS = service_pb2.ModelInferRequest.InferInputTensor.DESCRIPTOR.fields_by_name
# Fields of a request beside its tensor elements (names, shape, parameters, outputs): generous, tritonclient
# sends fewer than 20. Each field becomes an object when the message is parsed, so they are counted first.
_STRUCTURE_FIELDS = 1024
_LENGTH_DELIMITED = 2


def model_of(message: bytes) -> tuple[str, str]:
    """The model name and version a serialized ``ModelInferRequest`` asks for, read without parsing the rest.

    Its top-level fields are walked (at most a bounded number of them); garbage is a BadRequest.
    """
    fields = _fields(message, 0, len(message), _STRUCTURE_FIELDS, "the request")
    wanted = {_REQUEST_FIELDS["model_name"].number: "", _REQUEST_FIELDS["model_version"].number: ""}
    for number, start, end in fields:
        if number in wanted:
            try:
                wanted[number] = message[start:end].decode()
            except UnicodeDecodeError:
                raise BadRequest("the request's model name or version is not UTF-8") from None
    name, version = wanted.values()
    return name, version


def parse_infer_request(message: bytes, shape: TensorShape) -> service_pb2.ModelInferRequest:
    """The parsed request, once its size in objects is known to fit the model.

    Parsing makes a Python-visible object per repeated element: 11 M one-byte images in a 33 MB message would
    take 1.6 GB. So the elements of every input's ``contents`` and the raw tensors are counted on the wire
    first, and a request with more than a batch of images is refused before it is parsed.
    """
    most = _STRUCTURE_FIELDS + shape.max_batch_size
    inputs, contents = _REQUEST_FIELDS["inputs"].number, _INPUT_FIELDS["contents"].number
    for number, start, end in _fields(message, 0, len(message), _STRUCTURE_FIELDS, "the request"):
        if number == inputs:
            for inner, first, last in _fields(message, start, end, _STRUCTURE_FIELDS, "an input"):
                if inner == contents:
                    _fields(message, first, last, most, "an input's contents")
    try:
        return service_pb2.ModelInferRequest.FromString(message)
    except DecodeError:
        raise BadRequest("the request is not a valid ModelInferRequest message") from None


def _fields(message: bytes, start: int, end: int, most: int, what: str) -> list[tuple[int, int, int]]:
    """The fields of the protobuf message in ``message[start:end]``: (number, value start, value end), where
    the value of a length-delimited field is its payload. More than ``most`` fields is a BadRequest."""
    fields = []
    position = start
    while position < end:
        if len(fields) == most:
            raise BadRequest(f"{what} holds more than {most} protobuf fields; this model takes at most {most}")
        key, position = _varint(message, position, end)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(message, position, end)
            value_start = value_end = position
        elif wire_type == 1 or wire_type == 5:
            value_start, position = position, position + (8 if wire_type == 1 else 4)
            value_end = position
        elif wire_type == _LENGTH_DELIMITED:
            length, value_start = _varint(message, position, end)
            value_end = position = value_start + length
        else:
            raise BadRequest("the request is not a valid ModelInferRequest message")
        if position > end or number == 0:
            raise BadRequest("the request is not a valid ModelInferRequest message")
        fields.append((number, value_start, value_end))
    return fields


def _varint(message: bytes, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while position < end and shift < 64:
        byte = message[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise BadRequest("the request is not a valid ModelInferRequest message")


@dataclass(frozen=True)
class GrpcRequest(DecodedRequest):
    """A decoded gRPC request, and the outputs that go to shared memory: name -> (region, offset, byte size)."""

    output_regions: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def decode_infer_request(
    message: bytes,
    model: str,
    shape: TensorShape,
    claim: Callable[[int], None],
    regions: SharedMemoryRegions | None = None,
) -> GrpcRequest:
    """Validate a serialized gRPC infer request against the model; every problem is a BadRequest saying what
    is wrong.

    The message's elements are counted before it is parsed (:func:`parse_infer_request`), and the tensor
    data's size is claimed through ``claim`` (the request's memory budget) before it is decoded. With
    ``regions`` (the split topology's inference process) a tensor input and the outputs may live in
    registered shared memory.
    """
    request = parse_infer_request(message, shape)
    item = only_input(request.inputs)
    if item.name not in _CONTENTS_FIELD:
        raise unknown_input(item.name, shape)
    shared = _region_of(item.parameters, f"input {item.name!r}", regions)
    if shared is not None and (request.raw_input_contents or item.HasField("contents")):
        raise BadRequest(f"input {item.name!r} names a shared memory region and also carries data")
    if shared is not None and item.name != TENSOR_INPUT:
        raise BadRequest(f"only input {TENSOR_INPUT!r} can be read from shared memory")
    if shared is None:
        raw: bytes | memoryview | None = _raw_contents(request, item)
    else:
        assert regions is not None  # _region_of refuses shared memory without regions
        raw = regions.view(*shared, f"input {item.name!r}")
    dims = list(item.shape)
    if item.name == TENSOR_INPUT:
        values = _typed_contents(item) if raw is None else None
        claim(len(raw) if raw is not None else 4 * len(values))
        numbers = None if values is None else np.asarray(values, dtype=np.float32)
        tensor, images = decode_tensor(item.datatype, dims, raw, numbers, shape), None
    else:
        count = image_count(item.datatype, dims, shape.max_batch_size)
        if raw is not None:
            claim(len(raw))
            elements = unpack_bytes(raw, count)
        else:
            typed = _typed_contents(item)
            if len(typed) != count:
                raise element_count_error(len(typed), count)
            elements = list(typed)
            claim(sum(map(len, elements)))
        tensor, images = None, [Upload(data) for data in elements]
    timeout = request.parameters.get("timeout")
    timeout_s = None if timeout is None else timeout_parameter(_parameter_value(timeout))
    inference = InferenceRequest(model, tensor, images, id=request.id or None, timeout_s=timeout_s)
    output_regions = {
        output.name: region
        for output in request.outputs
        if (region := _region_of(output.parameters, f"output {output.name!r}", regions)) is not None
    }
    return GrpcRequest(inference, _requested_outputs(request), output_regions)


def _region_of(
    parameters: Mapping[str, service_pb2.InferParameter], what: str, regions: SharedMemoryRegions | None
) -> tuple[str, int, int] | None:
    """The (region, offset, byte size) a tensor's parameters name, if any."""
    if "shared_memory_region" not in parameters:
        return None
    if regions is None:
        raise BadRequest(f"{what}: this endpoint does not take shared memory; send the data in the message")
    name = _parameter_value(parameters["shared_memory_region"])
    size = _parameter_value(parameters.get("shared_memory_byte_size", service_pb2.InferParameter()))
    offset = _parameter_value(parameters.get("shared_memory_offset", service_pb2.InferParameter(int64_param=0)))
    if not isinstance(name, str) or not isinstance(size, int) or not isinstance(offset, int):
        raise BadRequest(f"{what}: shared_memory_region (string), shared_memory_byte_size and _offset (int64)")
    return name, offset, size


def _raw_contents(
    request: service_pb2.ModelInferRequest, item: service_pb2.ModelInferRequest.InferInputTensor
) -> bytes | None:
    if not request.raw_input_contents:
        return None
    if len(request.raw_input_contents) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(request.raw_input_contents)} entries for {len(request.inputs)} input(s)"
        )
    if item.HasField("contents"):
        raise BadRequest(f"input {item.name!r} has both contents and raw_input_contents")
    return request.raw_input_contents[0]


def _typed_contents(item: service_pb2.ModelInferRequest.InferInputTensor) -> Sequence[Any]:
    """The values of the one ``contents`` field this input's datatype uses; any other field is an error."""
    wanted = _CONTENTS_FIELD[item.name]
    used = [field.name for field, _ in item.contents.ListFields()]
    if any(name != wanted for name in used):
        raise BadRequest(f"input {item.name!r} carries {', '.join(used)}; its values go in contents.{wanted}")
    return getattr(item.contents, wanted)


def _parameter_value(parameter: service_pb2.InferParameter) -> object:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _requested_outputs(request: service_pb2.ModelInferRequest) -> dict[str, bool]:
    """Output names in the order asked (all of them when none is asked); gRPC sends every output raw."""
    if not request.outputs:
        return dict.fromkeys(OUTPUTS, True)
    for output in request.outputs:
        check_output(output.name, output.parameters)
    return {output.name: True for output in request.outputs}


def encode_infer_response(
    result: InferenceResult, decoded: GrpcRequest, regions: SharedMemoryRegions | None = None
) -> service_pb2.ModelInferResponse:
    """Every requested output raw in the message, or written to the shared memory region it names."""
    response = service_pb2.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.id)
    for name in decoded.outputs:
        array = output_tensor(result, name)
        output = response.outputs.add(name=name, datatype="FP32", shape=array.shape)
        shared = decoded.output_regions.get(name)
        if shared is None:
            response.raw_output_contents.append(array.tobytes())
            continue
        assert regions is not None
        region, offset, size = shared
        regions.write(region, offset, size, array, f"output {name!r}")
        output.parameters["shared_memory_region"].string_param = region
        output.parameters["shared_memory_offset"].int64_param = offset
        output.parameters["shared_memory_byte_size"].int64_param = array.nbytes
    return response


def metadata_message(metadata: ModelMetadata) -> service_pb2.ModelMetadataResponse:
    """The HTTP metadata, field for field, as the gRPC message."""
    return service_pb2.ModelMetadataResponse(**metadata.model_dump())
