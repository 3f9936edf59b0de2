"""Prometheus metrics, one registry per app so several apps can live in one process (tests, tools).

With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor) every process writes
its samples to that directory and ``/metrics`` reads them all: counters and histograms add up, gauges
say how they combine (``multiprocess_mode``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from niff_serve.core.statistics import ModelStatistics, StatisticsMetrics

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "ModelMetrics"]

PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DROP_REASONS = ("queue_full", "timeout", "cancelled")
CPU_STAGES = ("decode", "resize_crop", "normalize", "inference", "encode")


@dataclass(frozen=True)
class ModelMetrics:
    """One model's series with the model label bound, handed to that model's batcher."""

    model: str
    batch_size: Histogram
    inference_seconds: Histogram
    queue_wait_seconds: Histogram
    preprocess_seconds: Histogram
    queue_depth: Gauge
    failures: Counter
    ready: Gauge
    statistics: ModelStatistics
    _dropped: Counter
    _cpu_by_stage: Mapping[str, Counter]

    def count_cpu(self, stage: str, seconds: float) -> None:
        """CPU time a thread spent in one stage of a request (``decode``, ``resize_crop``, ...)."""
        self._cpu_by_stage[stage].inc(seconds)

    def count_drop(self, reason: str) -> None:
        """A request given up before its answer: ``queue_full``, ``timeout`` or ``cancelled``."""
        self._dropped.labels(model=self.model, reason=reason).inc()


class Metrics:
    def __init__(self) -> None:
        # No `*_created` series: a timestamp per labelled child that doubles the scrape and that Prometheus
        # drops from the text format anyway. The switch is process-wide; a server process has one app.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self._request_series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        reg = self.registry
        self.requests = Counter(
            "niff_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=reg,
        )
        self.requests_in_progress = Gauge(
            "niff_http_requests_in_progress",
            "HTTP requests received and not yet answered (a scrape counts itself).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.request_seconds = Histogram(
            "niff_http_request_duration_seconds",
            "Time from request start to the end of the response.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.grpc_requests = Counter(
            "niff_grpc_requests",
            "gRPC calls answered, by method and status code.",
            ["method", "code"],
            registry=reg,
        )
        self.grpc_request_seconds = Histogram(
            "niff_grpc_request_duration_seconds",
            "Time from a gRPC call's start to its answer.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        model = ["model"]
        self._batch_size = Histogram(
            "niff_batch_size", "Images per inference call.", model, buckets=_BATCH_BUCKETS, registry=reg
        )
        self._inference_seconds = Histogram(
            "niff_inference_duration_seconds",
            "Backend time of one batch.",
            model,
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self._queue_wait_seconds = Histogram(
            "niff_queue_wait_seconds",
            "Time a request waited in the batch queue.",
            model,
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self._preprocess_seconds = Histogram(
            "niff_preprocess_duration_seconds",
            "Decode, resize, crop and normalize of one image.",
            model,
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self._queue_depth = Gauge(
            "niff_queue_depth",
            "Images admitted and not yet in a running batch.",
            model,
            registry=reg,
            multiprocess_mode="livesum",
        )
        self._dropped = Counter(
            "niff_requests_dropped",
            "Requests given up before their answer, by reason: " + ", ".join(DROP_REASONS) + ".",
            ["model", "reason"],
            registry=reg,
        )
        self._failures = Counter("niff_inference_failures", "Batches whose backend call raised.", model, registry=reg)
        self._cpu = Counter(
            "niff_cpu_seconds",
            "CPU time spent per stage of serving requests: " + ", ".join(CPU_STAGES) + " (inference counts the "
            "calling thread only, so all of it with one backend thread).",
            ["model", "stage"],
            registry=reg,
        )
        self._ready = Gauge(
            "niff_model_ready",
            "1 once the model is loaded and warmed up (in every worker process).",
            model,
            registry=reg,
            multiprocess_mode="livemin",
        )
        # Triton's statistics extension (GET /v2/models/{name}/stats, gRPC ModelStatistics) reads these.
        self.statistics = StatisticsMetrics(reg)

    def for_model(self, name: str) -> ModelMetrics:
        for reason in DROP_REASONS:
            self._dropped.labels(model=name, reason=reason)
        return ModelMetrics(
            model=name,
            batch_size=self._batch_size.labels(model=name),
            inference_seconds=self._inference_seconds.labels(model=name),
            queue_wait_seconds=self._queue_wait_seconds.labels(model=name),
            preprocess_seconds=self._preprocess_seconds.labels(model=name),
            queue_depth=self._queue_depth.labels(model=name),
            failures=self._failures.labels(model=name),
            ready=self._ready.labels(model=name),
            statistics=self.statistics.for_model(name),
            _dropped=self._dropped,
            _cpu_by_stage={stage: self._cpu.labels(model=name, stage=stage) for stage in CPU_STAGES},
        )

    def count_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered HTTP request; the labelled series are looked up once per combination, not per request."""
        key = (route, method, status)
        series = self._request_series.get(key)
        if series is None:
            series = self._request_series[key] = (
                self.requests.labels(route=route, method=method, status=str(status)),
                self.request_seconds.labels(route=route, method=method),
            )
        series[0].inc()
        series[1].observe(seconds)

    def view(self) -> CollectorRegistry:
        """Every series of the server: this process's, or with several workers all of theirs combined."""
        directory = os.environ.get(PROMETHEUS_DIR_ENV)
        if directory is None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return registry

    def exposition(self) -> bytes:
        return generate_latest(self.view())
