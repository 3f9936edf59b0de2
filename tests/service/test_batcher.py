"""The dynamic batcher in-process, with a recording backend: merging, limits, deadlines, cancellation, drain."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from polling import wait_until

from niff_serve.core.batcher import DynamicBatcher
from niff_serve.core.deadline import Deadline
from niff_serve.core.errors import BadRequest, DeadlineExceeded, InferenceFailed, QueueFull, ServiceUnavailable
from niff_serve.core.metrics import Metrics

pytestmark = pytest.mark.fast


class RecordingBackend:
    """Logits = per-row sums (so each caller can check it got its own rows); remembers batch sizes."""

    def __init__(self, fail_when: Callable[[np.ndarray], bool] = lambda batch: False) -> None:
        self.batches: list[int] = []
        self.fail_when = fail_when
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(len(batch))
        if self.fail_when(batch):
            raise RuntimeError("backend exploded")
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True).astype(np.float32)


def rows(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


Scenario = Callable[[DynamicBatcher, RecordingBackend], Awaitable[None]]


def run(scenario: Scenario, backend: RecordingBackend | None = None, **options: float) -> RecordingBackend:
    """Run ``scenario`` against a started batcher (default: batches of 4, 50 ms delay, queue of 8)."""
    backend = backend or RecordingBackend()
    settings = {"max_batch_size": 4, "max_delay_s": 0.05, "max_queue_size": 8, **options}

    async def main() -> None:
        metrics = Metrics().for_model("m")
        batcher = DynamicBatcher(backend, metrics=metrics, **settings)  # type: ignore[arg-type]
        batcher.start()
        try:
            await scenario(batcher, backend)
        finally:
            backend.gate.set()
            await batcher.close()

    asyncio.run(main())
    return backend


async def until(condition: Callable[[], bool], failure: str) -> None:
    """:func:`wait_until` off the event loop, which meanwhile runs the batcher."""
    await asyncio.to_thread(wait_until, condition, failure, 10)


def queued(batcher: DynamicBatcher, count: int) -> Callable[[], bool]:
    return lambda: batcher._queued_rows == count


async def infer(batcher: DynamicBatcher, inputs: np.ndarray, seconds: float = 10) -> np.ndarray:
    with batcher.admit(len(inputs)) as slot:
        return (await slot.infer(inputs, Deadline(seconds))).logits


def test_concurrent_requests_merge_and_each_gets_its_own_rows() -> None:
    async def scenario(batcher: DynamicBatcher, _: RecordingBackend) -> None:
        results = await asyncio.gather(*(infer(batcher, rows(v)) for v in (1, 2, 3, 4)))
        assert [r.ravel().tolist() for r in results] == [[1], [2], [3], [4]]

    backend = run(scenario, max_delay_s=5)
    assert backend.batches == [4]  # full before the 5 s delay: leaves at once


def test_a_batch_never_exceeds_the_max_and_a_request_is_never_split() -> None:
    async def scenario(batcher: DynamicBatcher, _: RecordingBackend) -> None:
        results = await asyncio.gather(*(infer(batcher, rows(v, v)) for v in (1, 2, 3)))
        assert [r.ravel().tolist() for r in results] == [[1, 1], [2, 2], [3, 3]]

    backend = run(scenario)
    assert backend.batches == [4, 2]


def test_a_lone_request_leaves_after_the_max_delay() -> None:
    async def scenario(batcher: DynamicBatcher, _: RecordingBackend) -> None:
        assert (await infer(batcher, rows(7))).ravel().tolist() == [7]

    assert run(scenario, max_delay_s=0.01).batches == [1]


def test_admission_limits() -> None:
    async def scenario(batcher: DynamicBatcher, _: RecordingBackend) -> None:
        with pytest.raises(BadRequest, match="at most 4"):
            batcher.admit(5)
        held = [batcher.admit(4), batcher.admit(4)]
        with pytest.raises(QueueFull):
            batcher.admit(1)
        held[0].release()
        batcher.admit(1).release()
        held[1].release()

    run(scenario)


def test_deadline_gives_504_and_frees_the_queue() -> None:
    async def scenario(batcher: DynamicBatcher, backend: RecordingBackend) -> None:
        with pytest.raises(DeadlineExceeded):
            await infer(batcher, rows(1), seconds=0.05)
        assert batcher._queued_rows == 0 and batcher._admitted == 0

    assert run(scenario, max_delay_s=30).batches == []


def test_cancelled_request_is_dropped_before_inference() -> None:
    async def scenario(batcher: DynamicBatcher, _: RecordingBackend) -> None:
        task = asyncio.create_task(infer(batcher, rows(1)))
        await until(queued(batcher, 1), "one row not queued")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # A full batch leaves at once; had the cancelled row stayed queued, it would have gone first.
        assert (await infer(batcher, rows(2, 2, 2, 2))).ravel().tolist() == [2, 2, 2, 2]

    assert run(scenario, max_delay_s=30).batches == [4]


def test_backend_failure_fails_only_that_batch() -> None:
    async def scenario(batcher: DynamicBatcher, _: RecordingBackend) -> None:
        with pytest.raises(InferenceFailed, match="backend exploded"):
            await infer(batcher, rows(-1))
        assert (await infer(batcher, rows(5))).ravel().tolist() == [5]

    backend = RecordingBackend(fail_when=lambda batch: bool((batch < 0).any()))
    assert run(scenario, backend, max_delay_s=0).batches == [1, 1]


def test_requests_queue_while_a_batch_runs_and_leave_together() -> None:
    async def scenario(batcher: DynamicBatcher, backend: RecordingBackend) -> None:
        backend.gate.clear()
        first = asyncio.create_task(infer(batcher, rows(1)))
        await asyncio.to_thread(backend.entered.wait, 10)  # the first batch is now blocked inside the backend
        rest = [asyncio.create_task(infer(batcher, rows(v))) for v in (2, 3, 4)]
        await until(queued(batcher, 3), "three rows not queued")
        backend.gate.set()
        assert [r.ravel().tolist() for r in await asyncio.gather(first, *rest)] == [[1], [2], [3], [4]]

    assert run(scenario, max_delay_s=0).batches == [1, 3]


def test_close_finishes_admitted_work_and_refuses_new() -> None:
    async def main() -> None:
        backend = RecordingBackend()
        metrics = Metrics().for_model("m")
        batcher = DynamicBatcher(backend, max_batch_size=4, max_delay_s=30, max_queue_size=8, metrics=metrics)
        batcher.start()
        pending = [asyncio.create_task(infer(batcher, rows(v))) for v in (1, 2)]
        await until(queued(batcher, 2), "two rows not queued")
        await batcher.close()  # does not wait the 30 s delay
        assert [r.ravel().tolist() for r in await asyncio.gather(*pending)] == [[1], [2]]
        with pytest.raises(ServiceUnavailable):
            batcher.admit(1)
        assert backend.batches == [2]

    asyncio.run(main())


class MeetingBackend(RecordingBackend):
    """Each call waits for ``parties`` calls to be inside at once (a barrier): proves batches run concurrently."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=2)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.barrier.wait()
        return super().__call__(batch)


@pytest.mark.parametrize(("instances", "met"), [(2, True), (1, False)])
def test_instances_run_batches_at_once(instances: int, met: bool) -> None:
    """config.pbtxt's instance_group count: that many batches of one model run at the same time; one instance
    runs them one after the other (the two batches never meet, and the barrier breaks)."""

    async def scenario(batcher: DynamicBatcher, backend: RecordingBackend) -> None:
        answers = await asyncio.gather(
            infer(batcher, rows(1, 2, 3, 4)), infer(batcher, rows(5, 6, 7, 8)), return_exceptions=True
        )
        succeeded = [not isinstance(answer, BaseException) for answer in answers]
        assert succeeded == [met, met]

    run(scenario, MeetingBackend(2), instances=instances, max_delay_s=0.0)
