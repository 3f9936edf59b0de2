"""Triton's model-configuration, statistics and model-repository extensions, built once as protobuf messages.

gRPC answers these messages as they are; HTTP answers them as Triton's JSON (``niff_contract.message_json``).
"""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from niff_contract import ModelConfig
from niff_serve.core.errors import Unsupported
from niff_serve.core.runtime import ModelRuntime
from niff_serve.core.state import ServiceState
from niff_serve.core.statistics import statistics_message

MODEL_CONTROL_REFUSED = (
    "this server serves the model repository it started with; models cannot be loaded or unloaded at run time "
    "(restart the server, or roll out a new deployment, to change them)"
)


def served_config(runtime: ModelRuntime) -> ModelConfig:
    """The model's config.pbtxt with the batch size and queue delay this server uses (settings may override them),
    and a ``version_policy`` naming the one version it serves (niff.json's; the file may list more for Triton)."""
    config = ModelConfig()
    config.CopyFrom(runtime.folder.config)
    config.version_policy.specific.versions[:] = [int(runtime.folder.version)]
    config.max_batch_size = runtime.max_batch_size
    config.dynamic_batching.max_queue_delay_microseconds = round(runtime.batcher.max_delay_s * 1e6)
    return config


def statistics(state: ServiceState, name: str = "", version: str = "") -> service_pb2.ModelStatisticsResponse:
    """One model's statistics, or every model's when ``name`` is empty (Triton's convention)."""
    runtimes = [state.dataplane.model(name, version or None)] if name else list(state.models.values())
    return statistics_message(state.metrics.view(), [(r.name, r.folder.version) for r in runtimes])


def repository_index(state: ServiceState, ready_only: bool = False) -> service_pb2.RepositoryIndexResponse:
    """Every model of the repository with its state: READY, or UNAVAILABLE once it has stopped."""
    models = [
        service_pb2.RepositoryIndexResponse.ModelIndex(
            name=runtime.name, version=runtime.folder.version, state="READY" if runtime.ready else "UNAVAILABLE"
        )
        for runtime in state.models.values()
        if runtime.ready or not ready_only
    ]
    return service_pb2.RepositoryIndexResponse(models=models)


def refuse_model_control() -> Unsupported:
    return Unsupported(MODEL_CONTROL_REFUSED)
