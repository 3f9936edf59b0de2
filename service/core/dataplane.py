"""The protocol-independent core of inference (KServe's ``DataPlane``), and the one path every inference call
takes, whatever its transport.

:meth:`DataPlane.call` checks the API key, finds the model and version, starts the deadline, holds the
request's share of the body budget while the transport reads and decodes the body, and runs the decoded
request (:meth:`DataPlane.infer`: admission, preprocessing, batching, statistics). A transport supplies
only what its wire format needs: how to read the body, how to decode it, and how it notices a client
that left. Model lookup, auth, deadlines and budgets cannot differ between REST, KServe v2 over HTTP and
gRPC, and a new transport cannot skip one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from niff_serve.core.auth import check_api_key
from niff_serve.core.body_budget import BodyBudget, BodyShare
from niff_serve.core.deadline import Deadline
from niff_serve.core.errors import NotFound
from niff_serve.core.inference import InferenceRequest, InferenceResult
from niff_serve.core.protocol_v2 import DecodedRequest
from niff_serve.core.runtime import ModelRuntime
from niff_serve.core.settings import Settings

D = TypeVar("D", bound=DecodedRequest)


@dataclass(frozen=True)
class Call:
    """What a transport knows of an inference call before it reads the body."""

    model: str
    version: str | None
    token: str | None
    # The transport's own time limit (a gRPC deadline), tightening the server's.
    timeout_s: float | None = None


# The transport's part of a call: read the body within the deadline, its bytes claimed from the share ...
ReadBody = Callable[[Deadline, BodyShare], Awaitable[bytes]]
# ... decode it for the model (what parsing costs claimed from the share) ...
Decode = Callable[[bytes, ModelRuntime, BodyShare], Awaitable[D]]
# ... and wait for the inference, giving it up when the client leaves.
Watch = Callable[[Awaitable[InferenceResult]], Awaitable[InferenceResult]]


@dataclass(frozen=True)
class Answered(Generic[D]):
    runtime: ModelRuntime
    decoded: D
    result: InferenceResult
    deadline: Deadline


class DataPlane:
    def __init__(
        self,
        models: Mapping[str, ModelRuntime],
        settings: Settings,
        body_budget: BodyBudget,
        records_requests: bool = True,
    ) -> None:
        self._models = models
        self._settings = settings
        self._budget = body_budget
        # False in a split topology's inference process: its calls are the front ends' batches, and the front
        # ends record the clients' requests.
        self._records_requests = records_requests

    def authorize(self, token: str | None) -> None:
        """The API key check of every model endpoint (a no-op on a server without a key)."""
        check_api_key(self._settings.api_key, token)

    def model(self, name: str, version: str | None = None) -> ModelRuntime:
        """The served model ``name`` (404 when unknown, or when ``version`` is not the one served)."""
        runtime = self._models.get(name)
        if runtime is None:
            raise NotFound(f"unknown model {name!r}; this server has {', '.join(self._models) or 'none'}")
        if version is not None and version != runtime.folder.version:
            raise NotFound(f"model {name!r} has no version {version!r}; it serves version {runtime.folder.version}")
        return runtime

    async def call(self, call: Call, read: ReadBody, decode: Decode[D], watch: Watch | None = None) -> Answered[D]:
        """One inference call from key check to logits (see the module's docstring)."""
        self.authorize(call.token)
        runtime = self.model(call.model, call.version)
        deadline = Deadline(self._settings.request_timeout_s)
        if call.timeout_s is not None:
            deadline = deadline.tightened(call.timeout_s)
        with self._budget.share() as share:
            body = await read(deadline, share)
            decoded = await decode(body, runtime, share)
            work = self.infer(decoded.inference, deadline)
            result = await (work if watch is None else watch(work))
        return Answered(runtime, decoded, result, deadline)

    async def infer(self, request: InferenceRequest, deadline: Deadline) -> InferenceResult:
        """Admit, preprocess (images), batch and run ``request`` within ``deadline`` (tightened by its timeout)."""
        runtime = self.model(request.model, request.version)
        statistics = runtime.metrics.statistics
        try:
            if request.timeout_s is not None:
                deadline = deadline.tightened(request.timeout_s)
            if request.images is not None:
                batch, preprocess_s = await runtime.infer_images(request.images, deadline)
            else:
                assert request.tensor is not None
                batch, preprocess_s = await runtime.infer_tensor(request.tensor, deadline), 0.0
        except BaseException:  # cancelled (the client left) counts as failed too
            if self._records_requests:
                statistics.record_failure(deadline.elapsed())
            raise
        if self._records_requests:
            statistics.record_success(
                deadline.elapsed(),
                len(batch.logits),
                batch.queue_s,
                preprocess_s + batch.input_s,
                batch.inference_s,
                batch.output_s,
            )
        return InferenceResult(request.model, runtime.folder.version, request.id, batch.logits, batch, preprocess_s)
