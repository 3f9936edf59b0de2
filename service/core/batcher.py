"""Dynamic batching: concurrent requests for one model merge into a single backend call.

A batch leaves when it holds ``max_batch_size`` images or when its oldest request has waited
``max_delay_s`` (Triton's ``max_queue_delay``), whichever is first. Admission is bounded: a request
reserves room for its images before preprocessing, so an overloaded model answers 503 at once
instead of queueing work it cannot finish. Requests that time out or are cancelled (their client
disconnected) leave the queue; if their batch is already running, its result for them is discarded.
Each successful batch is recorded in the model's statistics (:mod:`niff_serve.core.statistics`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from niff_serve.core.deadline import Deadline
from niff_serve.core.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceFailed,
    QueueFull,
    ServiceError,
    ServiceUnavailable,
)
from niff_serve.core.metrics import ModelMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch, and the times of that batch's stages."""

    logits: np.ndarray
    queue_s: float
    inference_s: float
    batch_size: int
    input_s: float
    output_s: float


class _Pending:
    __slots__ = ("enqueued_at", "future", "inputs", "slot")

    def __init__(self, slot: Slot, inputs: np.ndarray, future: asyncio.Future[BatchResult]) -> None:
        self.slot = slot
        self.inputs = inputs
        self.future = future
        self.enqueued_at = time.monotonic()

    @property
    def rows(self) -> int:
        return self.inputs.shape[0]


class Slot:
    """Room for one request's images in the queue, held from admission until they enter a batch."""

    def __init__(self, batcher: DynamicBatcher, rows: int) -> None:
        self._batcher = batcher
        self.rows = rows
        self._held = True

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._batcher._release(self.rows)

    async def infer(self, inputs: np.ndarray, deadline: Deadline) -> BatchResult:
        """Queue ``inputs`` (``rows`` images) and wait for their logits within ``deadline``."""
        if inputs.shape[0] != self.rows:
            raise ValueError(f"slot holds {self.rows} rows, got {inputs.shape[0]}")
        return await self._batcher.submit(self, inputs, deadline)


class DynamicBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue_size: int,
        metrics: ModelMetrics,
        records_batches: bool = True,
        instances: int = 1,
    ) -> None:
        self._run_backend = run
        # False when another process runs the batches (a remote backend) and records them itself.
        self._records_batches = records_batches
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._max_queue_size = max_queue_size
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._admitted = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        # config.pbtxt's instance_group count: batches of this model that run at once.
        self.instances = instances
        self._free = asyncio.Semaphore(instances)
        self._running: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"infer-{metrics.model}")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._collect(), name=f"batcher-{self._metrics.model}")

    async def close(self) -> None:
        """Refuse new requests, run everything already admitted without waiting for more, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.wait(self._running)
        self._executor.shutdown(wait=True)

    def _timed_backend(self, inputs: np.ndarray) -> np.ndarray:
        started = time.thread_time()
        try:
            return self._run_backend(inputs)
        finally:
            self._metrics.count_cpu("inference", time.thread_time() - started)

    def admit(self, rows: int) -> Slot:
        """Reserve room for ``rows`` images or fail now: 400 (too many for one batch) or 503."""
        if rows > self.max_batch_size:
            raise BadRequest(f"{rows} images in one request; this model takes at most {self.max_batch_size}")
        if self._closing:
            raise ServiceUnavailable("the server is shutting down")
        if self._admitted + rows > self._max_queue_size:
            self._metrics.count_drop("queue_full")
            raise QueueFull(f"model {self._metrics.model!r} is at its queue limit of {self._max_queue_size} images")
        self._admitted += rows
        self._metrics.queue_depth.set(self._admitted)
        return Slot(self, rows)

    def _release(self, rows: int) -> None:
        self._admitted -= rows
        self._metrics.queue_depth.set(self._admitted)
        if self._closing:
            self._wakeup.set()

    async def submit(self, slot: Slot, inputs: np.ndarray, deadline: Deadline) -> BatchResult:
        """Queue ``inputs`` under ``slot`` (from :meth:`admit`) and wait for their share of a batch."""
        pending = _Pending(slot, inputs, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_rows += pending.rows
        self._wakeup.set()
        try:
            return await deadline.wait(pending.future, "queueing and inference")
        except DeadlineExceeded:
            self._withdraw(pending, "timeout")
            raise
        except asyncio.CancelledError:
            self._withdraw(pending, "cancelled")
            raise

    def _withdraw(self, pending: _Pending, reason: str) -> None:
        self._metrics.count_drop(reason)
        pending.future.cancel()
        if pending in self._queue:
            self._queue.remove(pending)
            self._queued_rows -= pending.rows
            self._wakeup.set()

    async def _collect(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue:
                if self._closing and self._admitted == 0:
                    return
                continue
            # A batch is formed only once an instance is free to run it, so it holds all that came meanwhile.
            await self._free.acquire()
            await self._wait_for_fill()
            batch = self._take_batch()
            if not batch:
                self._free.release()
                continue
            task = asyncio.create_task(self._run_then_free(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            self._wakeup.set()

    async def _run_then_free(self, batch: list[_Pending]) -> None:
        try:
            await self._run(batch)
        finally:
            self._free.release()
            self._wakeup.set()

    async def _wait_for_fill(self) -> None:
        """Return once the queue holds a full batch, its oldest request is due, or we are closing."""
        while self._queue and self._queued_rows < self.max_batch_size and not self._closing:
            due = self._queue[0].enqueued_at + self.max_delay_s - time.monotonic()
            if due <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), due)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
            pending = self._queue.popleft()
            self._queued_rows -= pending.rows
            pending.slot.release()
            batch.append(pending)
            rows += pending.rows
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        assembling = time.monotonic()
        for pending in batch:
            self._metrics.queue_wait_seconds.observe(assembling - pending.enqueued_at)
        inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([p.inputs for p in batch])
        started = time.monotonic()
        try:
            logits = await asyncio.get_running_loop().run_in_executor(self._executor, self._timed_backend, inputs)
            if logits.shape[0] != inputs.shape[0]:
                raise RuntimeError(f"backend returned {logits.shape[0]} rows for {inputs.shape[0]} inputs")
        except Exception as exc:  # a failing backend fails this batch only; the loop keeps serving
            self._metrics.failures.inc()
            if isinstance(exc, ServiceError):  # the backend's own answer (a remote predictor's refusal)
                logger.error("inference failed: %s", exc, extra={"model": self._metrics.model})
                failure: ServiceError = exc
            else:
                logger.exception("inference failed", extra={"model": self._metrics.model, "batch_size": len(inputs)})
                failure = InferenceFailed(f"inference failed: {exc}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        splitting = time.monotonic()
        elapsed = splitting - started
        offsets = np.cumsum([0] + [p.rows for p in batch])
        shares = [logits[start:end] for start, end in itertools.pairwise(offsets)]
        input_s, output_s = started - assembling, time.monotonic() - splitting
        if self._records_batches:
            self._metrics.batch_size.observe(len(inputs))
            self._metrics.inference_seconds.observe(elapsed)
            self._metrics.statistics.record_execution(len(inputs), input_s, elapsed, output_s)
        for pending, share in zip(batch, shares, strict=True):
            if not pending.future.done():
                queue_s = assembling - pending.enqueued_at
                pending.future.set_result(BatchResult(share, queue_s, elapsed, len(inputs), input_s, output_s))
