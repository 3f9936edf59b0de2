"""Per-model inference statistics in the shape of Triton's statistics extension, kept as Prometheus counters.

The batcher records each execution (a batch) and the data plane each request, whatever protocol it
came in by. The counters are series of the app's metrics registry, so with several worker processes
they add up across processes like the rest of ``/metrics``; Triton's message is read back from them:
``GET /v2/models/{name}/stats`` and the gRPC ``ModelStatistics`` call both answer :func:`statistics_message`.
They mirror Triton's own Prometheus metrics (success and failure counts, inference and execution
counts, cumulative time per stage).

What the stages measure here: ``queue`` is the wait for a batch to leave; ``compute_input`` the
request's image decoding and preprocessing plus assembling its batch; ``compute_infer`` the backend
call of that batch; ``compute_output`` splitting the batch's logits among its requests.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from tritonclient.grpc import service_pb2

STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
BATCH_STAGES = STAGES[1:]
OUTCOMES = ("success", "fail")
# (sample name, model, the sample's other label values in label-name order) -> value, summed over processes.
_Values = dict[tuple[str, str, tuple[str, ...]], float]
# The samples statistics_message reads.
_SAMPLES = frozenset(
    {
        "niff_inference_requests_total",
        "niff_inference_request_seconds_total",
        "niff_inference_stage_seconds_total",
        "niff_inferences_total",
        "niff_batch_executions_total",
        "niff_batch_stage_seconds_total",
        "niff_last_inference_timestamp_seconds",
    }
)


class StatisticsMetrics:
    """The statistics' series in one registry; :meth:`for_model` binds a model's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        model = ["model"]
        self.requests = Counter(
            "niff_inference_requests",
            "Requests that reached a model, by outcome: success, or fail (refused or failed on the way).",
            ["model", "outcome"],
            registry=registry,
        )
        self.request_seconds = Counter(
            "niff_inference_request_seconds",
            "Cumulative time from arrival to answer of those requests, by outcome.",
            ["model", "outcome"],
            registry=registry,
        )
        self.stage_seconds = Counter(
            "niff_inference_stage_seconds",
            "Cumulative time successful requests spent per stage: " + ", ".join(STAGES) + ".",
            ["model", "stage"],
            registry=registry,
        )
        self.inferences = Counter("niff_inferences", "Images answered.", model, registry=registry)
        self.executions = Counter(
            "niff_batch_executions", "Batches run, by batch size.", ["model", "batch_size"], registry=registry
        )
        self.batch_seconds = Counter(
            "niff_batch_stage_seconds",
            "Cumulative time of batches per stage (" + ", ".join(BATCH_STAGES) + "), by batch size.",
            ["model", "batch_size", "stage"],
            registry=registry,
        )
        self.last_inference = Gauge(
            "niff_last_inference_timestamp_seconds",
            "When the model last answered a request (Unix time).",
            model,
            registry=registry,
            multiprocess_mode="max",
        )

    def for_model(self, name: str) -> ModelStatistics:
        return ModelStatistics(self, name)


class ModelStatistics:
    """One model's statistics series, with the model label bound once."""

    def __init__(self, metrics: StatisticsMetrics, model: str) -> None:
        self._metrics = metrics
        self._model = model
        self._requests = {o: metrics.requests.labels(model=model, outcome=o) for o in OUTCOMES}
        self._request_seconds = {o: metrics.request_seconds.labels(model=model, outcome=o) for o in OUTCOMES}
        self._stages = [metrics.stage_seconds.labels(model=model, stage=stage) for stage in STAGES]
        self._inferences = metrics.inferences.labels(model=model)
        self._last_inference = metrics.last_inference.labels(model=model)
        self._batches: dict[int, tuple[Counter, list[Counter]]] = {}

    def record_execution(self, batch_size: int, input_s: float, infer_s: float, output_s: float) -> None:
        """One backend call that succeeded, on ``batch_size`` images."""
        if batch_size not in self._batches:
            size = str(batch_size)
            self._batches[batch_size] = (
                self._metrics.executions.labels(model=self._model, batch_size=size),
                [self._metrics.batch_seconds.labels(model=self._model, batch_size=size, stage=s) for s in BATCH_STAGES],
            )
        executions, stages = self._batches[batch_size]
        executions.inc()
        for series, seconds in zip(stages, (input_s, infer_s, output_s), strict=True):
            series.inc(seconds)

    def record_success(
        self, total_s: float, images: int, queue_s: float, input_s: float, infer_s: float, output_s: float
    ) -> None:
        """One request answered, ``total_s`` after it arrived."""
        self._requests["success"].inc()
        self._request_seconds["success"].inc(total_s)
        for series, seconds in zip(self._stages, (queue_s, input_s, infer_s, output_s), strict=True):
            series.inc(seconds)
        self._inferences.inc(images)
        self._last_inference.set(time.time())

    def record_failure(self, total_s: float) -> None:
        """One request for this model that got an error instead of an answer."""
        self._requests["fail"].inc()
        self._request_seconds["fail"].inc(total_s)


def statistics_message(
    registry: CollectorRegistry, models: Iterable[tuple[str, str]]
) -> service_pb2.ModelStatisticsResponse:
    """Triton's statistics of ``models`` (name, version), read from a registry holding the series above."""
    values: _Values = defaultdict(float)
    for family in registry.collect():
        for sample in family.samples:
            if sample.name in _SAMPLES:
                rest = tuple(v for k, v in sorted(sample.labels.items()) if k != "model")
                values[sample.name, sample.labels["model"], rest] += sample.value
    return service_pb2.ModelStatisticsResponse(
        model_stats=[_model_message(values, name, version) for name, version in models]
    )


def _model_message(values: _Values, name: str, version: str) -> service_pb2.ModelStatistics:
    def get(metric: str, *labels: str) -> float:
        return values.get((metric, name, labels), 0.0)

    def duration(count: float, seconds: float) -> service_pb2.StatisticDuration:
        return service_pb2.StatisticDuration(count=round(count), ns=round(seconds * 1e9))

    successes = get("niff_inference_requests_total", "success")
    stages = {s: duration(successes, get("niff_inference_stage_seconds_total", s)) for s in STAGES}
    sizes = sorted(
        int(labels[0]) for metric, model, labels in values if metric == "niff_batch_executions_total" and model == name
    )
    batches = []
    for size in sizes:
        executions = get("niff_batch_executions_total", str(size))
        times = {s: duration(executions, get("niff_batch_stage_seconds_total", str(size), s)) for s in BATCH_STAGES}
        batches.append(service_pb2.InferBatchStatistics(batch_size=size, **times))
    return service_pb2.ModelStatistics(
        name=name,
        version=version,
        last_inference=round(get("niff_last_inference_timestamp_seconds") * 1000),
        inference_count=round(get("niff_inferences_total")),
        execution_count=round(sum(b.compute_infer.count for b in batches)),
        inference_stats=service_pb2.InferStatistics(
            success=duration(successes, get("niff_inference_request_seconds_total", "success")),
            fail=duration(
                get("niff_inference_requests_total", "fail"), get("niff_inference_request_seconds_total", "fail")
            ),
            cache_hit=service_pb2.StatisticDuration(),
            cache_miss=service_pb2.StatisticDuration(),
            **stages,
        ),
        batch_stats=batches,
    )
