"""A remote predictor as a backend: the batches this server forms go over KServe v2 gRPC to another server
(another niff-serve, or Triton serving the same folder's ``model.onnx``) that runs the model.

This server then is a transformer, in KServe's terms: it decodes, preprocesses, batches and answers, and
loads no runtime (neither ONNX Runtime nor torch). The predictor forms its own batches across every
transformer that calls it.
"""

from __future__ import annotations

import logging
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from niff_contract import ModelFolder
from niff_serve.core.backends import Backend
from niff_serve.core.errors import ConfigurationError, DeadlineExceeded, InferenceFailed, ServiceUnavailable
from niff_serve.core.runtime import BackendLoader
from niff_serve.core.settings import Settings

logger = logging.getLogger(__name__)
# How often start-up asks a predictor that is not ready yet (it may start after this server).
_READY_POLL_S = 1.0


class RemoteBackend(Backend):
    """One model of a remote predictor: ``run`` sends a batch as raw FP32 bytes and reads the logits back."""

    kind = "remote"
    device = "remote"

    def __init__(self, channel: grpc.Channel, folder: ModelFolder, timeout_s: float) -> None:
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._name, self._version = folder.name, folder.version
        self._input, self._output = folder.manifest.input.name, folder.manifest.output.name
        self._timeout_s = timeout_s
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

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = service_pb2.ModelInferRequest(model_name=self._name, model_version=self._version)
        request.inputs.add(name=self._input, datatype="FP32", shape=batch.shape)
        request.outputs.add(name=self._output)
        request.raw_input_contents.append(np.ascontiguousarray(batch, dtype="<f4").tobytes())
        try:
            response = self._stub.ModelInfer(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise _service_error(error) from None
        shape = tuple(response.outputs[0].shape)
        return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(shape)


def _service_error(error: grpc.RpcError) -> InferenceFailed | ServiceUnavailable | DeadlineExceeded:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServiceUnavailable(f"the predictor is unavailable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the predictor did not answer in time: {details}")
    return InferenceFailed(f"the predictor answered {code.name}: {details}")


def remote_loader(settings: Settings) -> BackendLoader:
    """Backends that call ``settings.predictor`` over one shared channel, each waiting at start-up (up to
    ``startup_timeout_s``) for the predictor to serve its model."""
    assert settings.predictor is not None
    address = settings.predictor.removeprefix("grpc://")
    # This server's own batches, whatever their size (gRPC's default limit is 4 MiB).
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)])

    def load(folder: ModelFolder, _: Settings, max_batch_size: int) -> Backend:
        backend = RemoteBackend(channel, folder, settings.request_timeout_s)
        backend.wait_ready(address, settings.startup_timeout_s)
        return backend

    return load
