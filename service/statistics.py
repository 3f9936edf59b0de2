"""Per-model inference statistics in the shape of Triton's statistics extension.

The batcher records each execution (a batch) and the data plane each request, whatever protocol it
came in by; ``GET /v2/models/{name}/stats`` and the gRPC ``ModelStatistics`` call both answer
:meth:`ModelStatistics.message`. Every update happens on the event loop, so nothing here locks.

What the stages measure here: ``queue`` is the wait for a batch to leave; ``compute_input`` the
request's image decoding and preprocessing plus assembling its batch; ``compute_infer`` the backend
call of that batch; ``compute_output`` splitting the batch's logits among its requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tritonclient.grpc import service_pb2


@dataclass
class Duration:
    """Triton's ``StatisticDuration``: how many, and their cumulative nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, round(seconds * 1e9))

    def message(self) -> service_pb2.StatisticDuration:
        return service_pb2.StatisticDuration(count=self.count, ns=self.ns)


@dataclass
class _Compute:
    input: Duration = field(default_factory=Duration)
    infer: Duration = field(default_factory=Duration)
    output: Duration = field(default_factory=Duration)

    def add(self, input_s: float, infer_s: float, output_s: float) -> None:
        self.input.add(input_s)
        self.infer.add(infer_s)
        self.output.add(output_s)


class ModelStatistics:
    def __init__(self) -> None:
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute = _Compute()
        self.batches: dict[int, _Compute] = {}

    def record_execution(self, batch_size: int, input_s: float, infer_s: float, output_s: float) -> None:
        """One backend call that succeeded, on ``batch_size`` images."""
        self.execution_count += 1
        self.batches.setdefault(batch_size, _Compute()).add(input_s, infer_s, output_s)

    def record_success(
        self, total_s: float, images: int, queue_s: float, input_s: float, infer_s: float, output_s: float
    ) -> None:
        """One request answered, ``total_s`` after it arrived."""
        self.last_inference_ms = int(time.time() * 1000)
        self.inference_count += images
        self.success.add(total_s)
        self.queue.add(queue_s)
        self.compute.add(input_s, infer_s, output_s)

    def record_failure(self, total_s: float) -> None:
        """One request for this model that got an error instead of an answer."""
        self.fail.add(total_s)

    def message(self, name: str, version: str) -> service_pb2.ModelStatistics:
        return service_pb2.ModelStatistics(
            name=name,
            version=version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
            inference_stats=service_pb2.InferStatistics(
                success=self.success.message(),
                fail=self.fail.message(),
                queue=self.queue.message(),
                compute_input=self.compute.input.message(),
                compute_infer=self.compute.infer.message(),
                compute_output=self.compute.output.message(),
                cache_hit=service_pb2.StatisticDuration(),
                cache_miss=service_pb2.StatisticDuration(),
            ),
            batch_stats=[
                service_pb2.InferBatchStatistics(
                    batch_size=size,
                    compute_input=compute.input.message(),
                    compute_infer=compute.infer.message(),
                    compute_output=compute.output.message(),
                )
                for size, compute in sorted(self.batches.items())
            ],
        )
