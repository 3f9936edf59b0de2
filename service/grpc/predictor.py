"""A remote predictor as a backend: the batches this server forms go over KServe v2 gRPC to another server
(another niff-serve, or Triton serving the same folder's ``model.onnx``) that runs the model.

This server then is a transformer, in KServe's terms: it decodes, preprocesses, batches and answers, and
loads no runtime (neither ONNX Runtime nor torch). The predictor forms its own batches across every
transformer that calls it.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import queue
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from niff_contract import ModelFolder
from niff_serve.core.backends import Backend
from niff_serve.core.errors import ConfigurationError, DeadlineExceeded, InferenceFailed, ServiceUnavailable
from niff_serve.core.runtime import BackendLoader
from niff_serve.core.settings import Settings
from niff_serve.grpc.shared_memory import SHM_DIR

logger = logging.getLogger(__name__)
# How often start-up asks a predictor that is not ready yet (it may start after this server).
_READY_POLL_S = 1.0
# Batches of one model a front end has at the predictor at once.
IN_FLIGHT = 4


class SharedTensors:
    """One batch in shared memory with the predictor: the inputs, then the logits after them.

    A backend holds one per batch it may have in flight. The file under /dev/shm is removed as soon as the
    predictor has mapped it: the memory lives as long as either process holds it, and nothing is left behind
    if both die. Pages are allocated as batches touch them.
    """

    def __init__(self, folder: ModelFolder, max_batch_size: int) -> None:
        self.key = f"niff-{os.getpid()}-{folder.name}-{secrets.token_hex(4)}"
        self.input_bytes = max_batch_size * 4 * math.prod(folder.manifest.input.shape)
        self.size = self.input_bytes + max_batch_size * 4 * folder.num_classes
        fd = os.open(os.path.join(SHM_DIR, self.key), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, self.size)
            self._memory = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)

    def register(self, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
        try:
            request = service_pb2.SystemSharedMemoryRegisterRequest(name=self.key, key=self.key, byte_size=self.size)
            stub.SystemSharedMemoryRegister(request, timeout=10)
        finally:
            os.unlink(os.path.join(SHM_DIR, self.key))

    def request(self, request: service_pb2.ModelInferRequest, batch: np.ndarray, classes: int) -> None:
        """Put ``batch`` in the region and point the request's input and output at it."""
        np.frombuffer(self._memory, dtype="<f4", count=batch.size)[:] = batch.ravel()
        _point(request.inputs[0].parameters, self.key, 0, batch.nbytes)
        _point(request.outputs[0].parameters, self.key, self.input_bytes, len(batch) * classes * 4)

    def logits(self, rows: int, classes: int) -> np.ndarray:
        return (
            np.frombuffer(self._memory, dtype="<f4", count=rows * classes, offset=self.input_bytes)
            .reshape(rows, classes)
            .copy()
        )


def _point(parameters: Any, region: str, offset: int, byte_size: int) -> None:
    parameters["shared_memory_region"].string_param = region
    parameters["shared_memory_offset"].int64_param = offset
    parameters["shared_memory_byte_size"].int64_param = byte_size


class RemoteBackend(Backend):
    """One model of a remote predictor: ``run`` sends a batch as raw FP32 bytes (or, with ``shared`` regions,
    in shared memory, the message carrying only where) and reads the logits back.

    Several batches are in flight at once (``IN_FLIGHT``): with one, a front end would wait for each batch's
    answer before sending the next, and the predictor would wait its batching delay for requests that
    cannot come.
    """

    kind = "remote"
    device = "remote"
    parallel_batches = IN_FLIGHT

    def __init__(
        self, channel: grpc.Channel, folder: ModelFolder, timeout_s: float, shared: Sequence[SharedTensors] = ()
    ) -> None:
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._name, self._version = folder.name, folder.version
        self._input, self._output = folder.manifest.input.name, folder.manifest.output.name
        self._classes = folder.num_classes
        self._timeout_s = timeout_s
        self._shared = list(shared)
        self._free: queue.SimpleQueue[SharedTensors] = queue.SimpleQueue()
        for region in shared:
            self._free.put(region)
        self._most: int | None = None
        self.platform = ""

    def wait_ready(self, address: str, timeout_s: float) -> None:
        """Wait until the predictor serves this model and version, and learn its platform; a ConfigurationError
        when it does not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        request = service_pb2.ModelReadyRequest(name=self._name, version=self._version)
        said = False
        while True:
            try:
                if self._stub.ModelReady(request, timeout=5).ready:
                    break
                reason = "does not report the model ready"
            except grpc.RpcError as error:
                reason = f"answers {error.code().name}: {error.details()}"
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"model {self._name!r}: the predictor at {address} {reason} (waited {timeout_s:g} s)"
                )
            if not said:
                logger.info("waiting for the predictor at %s: it %s", address, reason, extra={"model": self._name})
                said = True
            time.sleep(_READY_POLL_S)
        metadata = self._stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=self._name, version=self._version))
        self.platform = metadata.platform
        self._most = self._predictor_batch_limit()
        for region in self._shared:
            region.register(self._stub)

    def _predictor_batch_limit(self) -> int | None:
        """The predictor's max_batch_size for the model (its config), or None when it does not say."""
        try:
            request = service_pb2.ModelConfigRequest(name=self._name, version=self._version)
            return self._stub.ModelConfig(request, timeout=10).config.max_batch_size or None
        except grpc.RpcError:
            return None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The batch's logits; a batch larger than the predictor takes goes in parts."""
        if self._most is None or len(batch) <= self._most:
            return self._run(batch)
        return np.concatenate([self._run(part) for part in np.split(batch, range(self._most, len(batch), self._most))])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        request = service_pb2.ModelInferRequest(model_name=self._name, model_version=self._version)
        request.inputs.add(name=self._input, datatype="FP32", shape=batch.shape)
        request.outputs.add(name=self._output)
        if not self._shared:
            request.raw_input_contents.append(np.ascontiguousarray(batch, dtype="<f4").tobytes())
            response = self._call(request)
            shape = tuple(response.outputs[0].shape)
            return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(shape)
        region = self._free.get()  # one is free: the batcher runs at most IN_FLIGHT batches at once
        try:
            region.request(request, batch, self._classes)
            self._call(request)
            return region.logits(len(batch), self._classes)
        finally:
            self._free.put(region)

    def _call(self, request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
        try:
            return self._stub.ModelInfer(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise _service_error(error) from None


def _service_error(error: grpc.RpcError) -> InferenceFailed | ServiceUnavailable | DeadlineExceeded:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceUnavailable(f"the predictor is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the predictor did not answer in time: {details}")
    return InferenceFailed(f"the predictor answered {code.name}: {details}")


class SharedPredictors(Backend):
    """One model on several predictors (the split topology's inference processes, one per GPU): each batch goes
    to the predictor with the fewest of this server's batches in flight."""

    kind = "remote"
    device = "remote"

    def __init__(self, predictors: Sequence[RemoteBackend]) -> None:
        self._predictors = list(predictors)
        self._in_flight = [0] * len(predictors)
        self._lock = threading.Lock()
        self.platform = predictors[0].platform
        self.parallel_batches = IN_FLIGHT * len(predictors)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            index = self._in_flight.index(min(self._in_flight))
            self._in_flight[index] += 1
        try:
            return self._predictors[index].run(batch)
        finally:
            with self._lock:
                self._in_flight[index] -= 1


def remote_loader(settings: Settings) -> BackendLoader:
    """Backends that call the predictors ``settings.predictor`` names (one channel each), each waiting at
    start-up (up to ``startup_timeout_s``) for its predictors to serve the model. A ``unix:`` predictor is the
    split topology's inference process, on this host: the tensors go through shared memory."""
    assert settings.predictor is not None
    addresses = [address.removeprefix("grpc://") for address in settings.predictor.split(",")]
    # This server's own batches, whatever their size (gRPC's default limit is 4 MiB).
    channels = {
        address: grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) for address in addresses
    }

    def connect(address: str, folder: ModelFolder, max_batch_size: int) -> RemoteBackend:
        local = address.startswith("unix:")
        shared = [SharedTensors(folder, max_batch_size) for _ in range(IN_FLIGHT)] if local else []
        backend = RemoteBackend(channels[address], folder, settings.request_timeout_s, shared)
        backend.wait_ready(address, settings.startup_timeout_s)
        return backend

    def load(folder: ModelFolder, _: Settings, max_batch_size: int) -> Backend:
        predictors = [connect(address, folder, max_batch_size) for address in addresses]
        return predictors[0] if len(predictors) == 1 else SharedPredictors(predictors)

    return load
