"""KServe v2 / Triton gRPC (``inference.GRPCInferenceService``) beside HTTP, in the same process and event loop.

Every call goes through the pieces its HTTP twin uses: the data plane for inference (models, batchers,
admission, deadlines, statistics), the request-body memory budget, the API key (``authorization:
Bearer <key>`` metadata), request ids (``x-request-id`` metadata, answered in the trailing metadata)
and the metrics. The service definition is the one ``tritonclient`` ships compiled; this module maps
calls onto those pieces and their errors onto gRPC status codes as Triton does.

The server starts once the models are loaded and stops with HTTP: on shutdown it refuses new calls
(UNAVAILABLE) and lets the calls in flight finish. Worker processes (``--workers``) each run one on the
same port (SO_REUSEPORT: the kernel spreads the connections), after the supervisor has made sure that
nothing else holds the port.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from tritonclient.grpc import service_pb2

from niff_serve.core import extensions
from niff_serve.core.auth import bearer_token
from niff_serve.core.body_budget import BodyShare
from niff_serve.core.dataplane import Call
from niff_serve.core.deadline import Deadline
from niff_serve.core.errors import BadRequest, ConfigurationError, ServiceError, ServiceUnavailable, Unsupported
from niff_serve.core.logs import request_id_var, valid_request_id
from niff_serve.core.ports import check_port, listen_address
from niff_serve.core.protocol_v2 import EXTENSIONS
from niff_serve.core.runtime import ModelRuntime
from niff_serve.core.settings import Settings
from niff_serve.core.state import ServiceState
from niff_serve.grpc.codec import (
    GrpcRequest,
    decode_infer_request,
    encode_infer_response,
    metadata_message,
    model_of,
)
from niff_serve.grpc.shared_memory import SharedMemoryRegions
from niff_serve.version import __version__

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("niff_serve.access")

Code = grpc.StatusCode
# HTTP status of a ServiceError -> gRPC status, as Triton maps its errors. Client mistakes are never INTERNAL.
_CODES: dict[int, grpc.StatusCode] = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED,
    413: Code.INVALID_ARGUMENT,
    415: Code.INVALID_ARGUMENT,
    422: Code.INVALID_ARGUMENT,
    499: Code.CANCELLED,
    500: Code.INTERNAL,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}
REQUEST_ID_KEY = "x-request-id"
SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]

Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def status_code(error: ServiceError) -> grpc.StatusCode:
    if isinstance(error, Unsupported):
        return Code.UNIMPLEMENTED
    return _CODES.get(error.status_code, Code.UNKNOWN)


def _retry_metadata(error: ServiceUnavailable) -> list[tuple[str, str]]:
    """When to retry, for people (``retry-after``, seconds, as over HTTP) and for gRPC's retry policies."""
    seconds = error.headers["Retry-After"]
    return [("retry-after", seconds), ("grpc-retry-pushback-ms", str(int(seconds) * 1000))]


def _rpc(*, open_to_all: bool = False, parsed: bool = True) -> Callable[[Method], Method]:
    """Per-call bookkeeping around a unary method: request id, API key (unless ``open_to_all``), parsing
    the request message after the key is checked (unless ``parsed`` is False: the method gets the bytes),
    status code from ServiceErrors, metrics and one access-log line."""

    def decorate(method: Method) -> Method:
        name = method.__name__
        request_type = None if not parsed else getattr(service_pb2, SERVICE.methods_by_name[name].input_type.name)

        @functools.wraps(method)
        async def call(servicer: InferenceServicer, request: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await servicer.serve(name, method, request_type, request, context, open_to_all)

        call.answered = True  # type: ignore[attr-defined]
        return call

    return decorate


def _parse(request_type: type[Message], request: bytes) -> Message:
    try:
        return request_type.FromString(request)
    except DecodeError:
        raise BadRequest(f"the request is not a valid {request_type.DESCRIPTOR.name} message") from None


class InferenceServicer:
    """The calls of ``inference.GRPCInferenceService`` this server answers (:func:`handlers` refuses the
    others as UNIMPLEMENTED).

    Requests arrive as bytes and are parsed only after the API key is checked: what a client without the key
    sends is never parsed, and a message that does not parse is INVALID_ARGUMENT, not a logged traceback.
    """

    def __init__(self, state: ServiceState, regions: SharedMemoryRegions | None = None) -> None:
        self._state = state
        # The split topology's inference process takes tensors in shared memory; the public endpoint does not.
        self._regions = regions
        # Its calls are the front ends' batches, whose requests the front ends log.
        self._access_level = logging.INFO if regions is None else logging.DEBUG

    async def serve(
        self,
        name: str,
        method: Method,
        request_type: type[Message] | None,
        request: bytes,
        context: grpc.aio.ServicerContext,
        open_to_all: bool,
    ) -> Any:
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        request_id = valid_request_id(metadata.get(REQUEST_ID_KEY, "")) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        trailers = [(REQUEST_ID_KEY, request_id)]
        started = time.perf_counter()
        code = Code.OK
        metrics = self._state.metrics
        refusal: str | None = None
        try:
            try:
                if not open_to_all:
                    self._state.dataplane.authorize(bearer_token(metadata.get("authorization")))
                message = request if request_type is None else _parse(request_type, request)
                response = await method(self, message, context)
                context.set_trailing_metadata(trailers)
                return response
            except ServiceError as error:
                code, refusal = status_code(error), error.message
                if isinstance(error, ServiceUnavailable):
                    trailers += _retry_metadata(error)
            except asyncio.CancelledError:  # the client cancelled or its deadline passed
                code = Code.CANCELLED
                raise
            except Exception:  # the last line of defence: a bug answers INTERNAL and the server goes on
                logger.exception("unhandled error")
                code, refusal = Code.INTERNAL, "internal server error"
            # A status set, not context.abort(): its exception would hold this frame (and the request's bytes)
            # in a reference cycle through the call's state, freed only when the garbage collector runs.
            context.set_code(code)
            context.set_details(refusal)
            context.set_trailing_metadata(tuple(trailers))
            return None
        finally:
            elapsed = time.perf_counter() - started
            metrics.grpc_requests.labels(method=name, code=code.name).inc()
            metrics.grpc_request_seconds.labels(method=name).observe(elapsed)
            access_logger.log(
                self._access_level,
                "gRPC %s %s",
                name,
                code.name,
                extra={"grpc_method": name, "grpc_code": code.name, "duration_ms": round(elapsed * 1000, 2)},
            )
            request_id_var.reset(token)

    # Method names are the protocol's. Health is open to all, like /v2/health/*.
    @_rpc(open_to_all=True)
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc(open_to_all=True)
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self._state.ready)

    @_rpc()
    async def ModelReady(self, request, context):
        """Not ready (rather than an error) for an unknown model or version, as Triton answers."""
        runtime = self._state.models.get(request.name)
        served = runtime is not None and request.version in ("", runtime.folder.version)
        return service_pb2.ModelReadyResponse(ready=served and runtime.ready and self._state.ready)

    @_rpc()
    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="niff-serve", version=__version__, extensions=EXTENSIONS)

    @_rpc()
    async def ModelMetadata(self, request, context):
        return metadata_message(self._state.dataplane.model(request.name, request.version or None).metadata())

    @_rpc(parsed=False)
    async def ModelInfer(self, request: bytes, context):
        """The one inference path (:meth:`DataPlane.call`; the key was checked before the message is walked for
        the model's name): the message is the body, already received."""
        state = self._state
        name, version = model_of(request)
        token = bearer_token(dict(context.invocation_metadata() or ()).get("authorization"))
        call = Call(name, version or None, token, context.time_remaining())

        async def read(deadline: Deadline, share: BodyShare) -> bytes:
            share.claim(len(request))  # the message, held since it arrived
            return request

        async def decode(body: bytes, runtime: ModelRuntime, share: BodyShare) -> GrpcRequest:
            shape, regions = runtime.tensor_shape, self._regions
            return await state.offload(decode_infer_request, body, runtime.name, shape, share.claim, regions)

        answered = await state.dataplane.call(call, read, decode)
        return encode_infer_response(answered.result, answered.decoded, self._regions)

    @_rpc()
    async def SystemSharedMemoryRegister(self, request, context):
        self._shared_memory().register(request.name, request.key, request.offset, request.byte_size)
        return service_pb2.SystemSharedMemoryRegisterResponse()

    @_rpc()
    async def SystemSharedMemoryUnregister(self, request, context):
        self._shared_memory().unregister(request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    @_rpc()
    async def SystemSharedMemoryStatus(self, request, context):
        response = service_pb2.SystemSharedMemoryStatusResponse()
        for region in self._shared_memory().regions(request.name):
            status = response.regions[region.name]
            status.name, status.key, status.offset, status.byte_size = (
                region.name,
                region.key,
                region.offset,
                region.byte_size,
            )
        return response

    def _shared_memory(self) -> SharedMemoryRegions:
        if self._regions is None:
            raise Unsupported("this endpoint does not take shared memory (only the split topology's inference process)")
        return self._regions

    @_rpc()
    async def ModelConfig(self, request, context):
        runtime = self._state.dataplane.model(request.name, request.version or None)
        return service_pb2.ModelConfigResponse(config=extensions.served_config(runtime))

    @_rpc()
    async def ModelStatistics(self, request, context):
        return extensions.statistics(self._state, request.name, request.version)

    @_rpc()
    async def RepositoryIndex(self, request, context):
        """One repository, whatever ``repository_name`` says."""
        return extensions.repository_index(self._state, request.ready)

    @_rpc()
    async def RepositoryModelLoad(self, request, context):
        raise extensions.refuse_model_control()

    @_rpc()
    async def RepositoryModelUnload(self, request, context):
        raise extensions.refuse_model_control()


async def _unimplemented_unary(request: bytes, context: grpc.aio.ServicerContext) -> None:
    await context.abort(Code.UNIMPLEMENTED, "this server does not implement this call")


async def _unimplemented_stream(requests: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(Code.UNIMPLEMENTED, "this server does not stream; call ModelInfer once per request")


def handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """Every method of the service: the servicer's, with requests as bytes (parsed after the key check), and
    UNIMPLEMENTED for the others without a logged traceback."""
    methods = {}
    for method in SERVICE.methods:
        respond = getattr(service_pb2, method.output_type.name).SerializeToString
        if method.client_streaming or method.server_streaming:
            methods[method.name] = grpc.stream_stream_rpc_method_handler(_unimplemented_stream)
            continue
        behaviour = getattr(servicer, method.name, None)
        if not getattr(behaviour, "answered", False):
            behaviour = _unimplemented_unary
        methods[method.name] = grpc.unary_unary_rpc_method_handler(behaviour, response_serializer=respond)
    return grpc.method_handlers_generic_handler(SERVICE.full_name, methods)


def grpc_address(settings: Settings) -> str:
    return listen_address(settings.host, settings.grpc_port)


def check_grpc_port(settings: Settings) -> None:
    """Bind the gRPC port once, as gRPC would (without SO_REUSEPORT): a port that anything holds becomes
    this one-line error, where gRPC's own failure would also write its C core's log line to stderr."""
    check_port(settings.host, settings.grpc_port, "gRPC")


class GrpcEndpoint:
    """The gRPC server of one app: :meth:`start` once the models are loaded, :meth:`stop` with HTTP.

    ``shared_port``: this process is one of several workers on the port (checked by their supervisor).
    ``internal``: instead, the Unix socket of a split topology's inference process, which its front ends
    alone reach, with tensors in shared memory.
    """

    def __init__(self, state: ServiceState, shared_port: bool = False, internal: str | None = None) -> None:
        self._state = state
        self._shared_port = shared_port
        self._internal = internal
        self._regions = None if internal is None else SharedMemoryRegions()
        self._server: grpc.aio.Server | None = None
        self._stopped: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Listen on ``grpc_port`` (nothing when it is 0) or the internal socket; an address that cannot be
        bound stops start-up."""
        settings = self._state.settings
        if self._internal is None and settings.grpc_port == 0:
            return
        address = self._internal or grpc_address(settings)
        if self._internal is None and not self._shared_port:
            check_grpc_port(settings)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_upload_bytes),
                # A lone server on a busy port must fail, not share the port's connections with another.
                ("grpc.so_reuseport", int(self._shared_port)),
            ]
        )
        server.add_generic_rpc_handlers((handlers(InferenceServicer(self._state, self._regions)),))
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigurationError(f"cannot listen for gRPC on {address}: {exc}") from None
        if not bound:
            raise ConfigurationError(f"cannot listen for gRPC on {address}")
        await server.start()
        self._server = server
        logger.info("gRPC listening on %s", address)

    def stop(self) -> Awaitable[None]:
        """Refuse new calls and finish those in flight (each ends by its deadline); the first call begins
        the drain, every call's awaitable ends with it."""
        if self._server is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if self._stopped is None:
            logger.info("gRPC draining: new calls are refused, calls in flight finish")
            grace = self._state.settings.request_timeout_s + 1
            self._stopped = asyncio.ensure_future(self._server.stop(grace))
        return asyncio.shield(self._stopped)
