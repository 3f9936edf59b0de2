"""KServe v2 over gRPC: ``ModelInferRequest`` in, ``ModelInferResponse`` out, with the HTTP path's checks.

The messages are Triton's compiled protobufs (``tritonclient.grpc.service_pb2``). A tensor arrives
either in ``raw_input_contents`` (what ``tritonclient.grpc`` sends: little-endian bytes, BYTES
elements each prefixed by a uint32 length) or in the input's typed ``contents``; both decode through
the same functions as the HTTP protocol (:mod:`niff_serve.protocol_v2`), so the same request is
refused or answered the same way on both. Outputs always go back in ``raw_output_contents``, as
Triton does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from niff_serve.dataplane import InferenceRequest, InferenceResult
from niff_serve.errors import BadRequest
from niff_serve.protocol_v2 import (
    IMAGE_INPUT,
    OUTPUTS,
    TENSOR_INPUT,
    DecodedRequest,
    ModelMetadata,
    TensorShape,
    check_output,
    decode_images,
    decode_tensor,
    output_tensor,
    timeout_parameter,
    unknown_input,
    unpack_bytes,
)

# Where each input's values go in ``InferTensorContents`` when they are not sent raw.
_CONTENTS_FIELD = {TENSOR_INPUT: "fp32_contents", IMAGE_INPUT: "bytes_contents"}


def decode_infer_request(
    request: service_pb2.ModelInferRequest, model: str, shape: TensorShape, claim: Callable[[int], None]
) -> DecodedRequest:
    """Validate a gRPC infer request against the model; every problem is a BadRequest saying what is wrong.

    The tensor data's size is claimed through ``claim`` (the request's memory budget) before it is decoded.
    """
    if len(request.inputs) != 1:
        raise BadRequest(f"give exactly one input ({TENSOR_INPUT!r} or {IMAGE_INPUT!r}), not {len(request.inputs)}")
    item = request.inputs[0]
    if item.name not in _CONTENTS_FIELD:
        raise unknown_input(item.name, shape)
    raw = _raw_contents(request, item)
    dims = list(item.shape)
    if item.name == TENSOR_INPUT:
        values = _typed_contents(item) if raw is None else None
        claim(len(raw) if raw is not None else 4 * len(values))
        numbers = None if values is None else np.asarray(values, dtype=np.float32)
        tensor, images = decode_tensor(item.datatype, dims, raw, numbers, shape), None
    else:
        if raw is not None:
            claim(len(raw))
            elements = unpack_bytes(raw)
        else:
            elements = list(_typed_contents(item))
            claim(sum(map(len, elements)))
        tensor, images = None, decode_images(item.datatype, dims, elements)
    timeout = request.parameters.get("timeout")
    timeout_s = None if timeout is None else timeout_parameter(_parameter_value(timeout))
    inference = InferenceRequest(model, tensor, images, id=request.id or None, timeout_s=timeout_s)
    return DecodedRequest(inference, _requested_outputs(request))


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


def encode_infer_response(result: InferenceResult, outputs: dict[str, bool]) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=result.model, model_version=result.version, id=result.id)
    for name in outputs:
        array = output_tensor(result, name)
        response.outputs.add(name=name, datatype="FP32", shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


def metadata_message(metadata: ModelMetadata) -> service_pb2.ModelMetadataResponse:
    """The HTTP metadata, field for field, as the gRPC message."""
    return service_pb2.ModelMetadataResponse(**metadata.model_dump())
