"""Triton's statistics message read back from the Prometheus series, in-process."""

from __future__ import annotations

import time

import pytest

from niff_serve.core.metrics import Metrics
from niff_serve.core.statistics import statistics_message

pytestmark = pytest.mark.fast


def test_message_reads_back_what_was_recorded() -> None:
    metrics = Metrics()
    tiny, other = metrics.for_model("tiny").statistics, metrics.for_model("other").statistics
    tiny.record_execution(4, 0.001, 0.010, 0.0005)
    tiny.record_execution(1, 0.002, 0.003, 0.0001)
    tiny.record_execution(4, 0.001, 0.020, 0.0005)
    started = time.time()
    tiny.record_success(0.5, images=3, queue_s=0.1, input_s=0.01, infer_s=0.02, output_s=0.001)
    tiny.record_success(0.25, images=1, queue_s=0.05, input_s=0.02, infer_s=0.03, output_s=0.002)
    tiny.record_failure(0.125)
    other.record_success(1.0, images=2, queue_s=0.0, input_s=0.0, infer_s=0.5, output_s=0.0)

    [stats] = statistics_message(metrics.view(), [("tiny", "1")]).model_stats
    assert (stats.name, stats.version) == ("tiny", "1")
    assert stats.inference_count == 4
    assert stats.execution_count == 3
    assert started * 1000 - 1 <= stats.last_inference <= time.time() * 1000 + 1
    inference = stats.inference_stats
    assert (inference.success.count, inference.success.ns) == (2, 750_000_000)
    assert (inference.fail.count, inference.fail.ns) == (1, 125_000_000)
    assert (inference.queue.count, inference.queue.ns) == (2, pytest.approx(150_000_000))
    assert (inference.compute_input.count, inference.compute_input.ns) == (2, pytest.approx(30_000_000))
    assert (inference.compute_infer.count, inference.compute_infer.ns) == (2, pytest.approx(50_000_000))
    assert (inference.compute_output.count, inference.compute_output.ns) == (2, pytest.approx(3_000_000))
    assert [b.batch_size for b in stats.batch_stats] == [1, 4]
    one, four = stats.batch_stats
    assert (one.compute_infer.count, one.compute_infer.ns) == (1, pytest.approx(3_000_000))
    assert (four.compute_infer.count, four.compute_infer.ns) == (2, pytest.approx(30_000_000))
    assert (four.compute_input.count, four.compute_input.ns) == (2, pytest.approx(2_000_000))
    assert (four.compute_output.count, four.compute_output.ns) == (2, pytest.approx(1_000_000))


def test_a_model_nothing_reached_reads_as_zeros() -> None:
    metrics = Metrics()
    metrics.for_model("idle")
    [stats] = statistics_message(metrics.view(), [("idle", "3")]).model_stats
    assert (stats.name, stats.version, stats.last_inference, stats.inference_count) == ("idle", "3", 0, 0)
    assert stats.execution_count == 0
    assert not stats.batch_stats
    assert stats.inference_stats.success.count == stats.inference_stats.fail.count == 0
