"""Batching, back-pressure, deadlines and disconnects, observed on a real server with a 2 s batching window.

The slow server waits up to 2 s for a batch of 4 to fill, so requests sit in its queue long enough for
the test to see them there (through /metrics) and act while they wait.
"""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .conftest import TINY, Photos, Reference, ServerProcess, classify

CLASSIFY = f"/v1/models/{TINY}:classify"


def images(photos: Photos) -> list[bytes]:
    return [
        photos.jpeg["china"],
        photos.jpeg["flower"],
        photos.encode("china", "PNG", "L"),
        photos.encode("flower", "WEBP", quality=80),
    ]


def test_concurrent_clients_share_one_batch_and_get_their_own_answers(
    slow_server: ServerProcess, photos: Photos, reference: Reference
) -> None:
    count, total = (slow_server.metric(f"niff_batch_size_{s}", model=TINY) for s in ("count", "sum"))
    datas = images(photos)
    responses = [f.result(60) for f in slow_server.in_background([classify(d) for d in datas])]
    for data, response in zip(datas, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["timing"]["batch_size"] == 4
        expected = reference.probabilities(TINY, data)
        [prediction] = body["predictions"]
        assert [c["index"] for c in prediction["top_k"]] == np.argsort(-expected, kind="stable").tolist()
        np.testing.assert_allclose([c["probability"] for c in prediction["top_k"]], np.sort(expected)[::-1], atol=1e-5)
    assert slow_server.metric("niff_batch_size_count", model=TINY) == count + 1
    assert slow_server.metric("niff_batch_size_sum", model=TINY) == total + 4


def test_full_queue_answers_503_with_retry_after(slow_server: ServerProcess, photos: Photos) -> None:
    rejected = slow_server.metric("niff_requests_dropped_total", model=TINY, reason="queue_full")
    waiting = slow_server.in_background([classify(photos.jpeg["china"])] * 3)
    slow_server.wait_for_metric("niff_queue_depth", 3, model=TINY)
    with slow_server.client() as client:
        files = [("f", photos.jpeg["flower"]), ("f", photos.jpeg["china"])]
        response = client.post(CLASSIFY, files=files)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "queue limit of 4 images" in response.json()["error"]
    assert [f.result(60).status_code for f in waiting] == [200, 200, 200]
    assert slow_server.metric("niff_requests_dropped_total", model=TINY, reason="queue_full") == rejected + 1


def test_request_deadline_answers_504_and_drops_the_work(slow_server: ServerProcess, photos: Photos) -> None:
    batches = slow_server.metric("niff_batch_size_count", model=TINY)
    triton_client = triton.InferenceServerClient(slow_server.url.removeprefix("http://"))
    tensor = triton.InferInput("input", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 32, 32), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"deadline of 0\.2\d* s passed") as error:
        triton_client.infer(TINY, [tensor], timeout=200_000)  # microseconds, Triton's per-request timeout
    triton_client.close()
    assert error.value.status() == "504"
    assert slow_server.metric("niff_queue_depth", model=TINY) == 0
    assert slow_server.metric("niff_requests_dropped_total", model=TINY, reason="timeout") >= 1
    with slow_server.client() as client:
        after = client.post(CLASSIFY, content=photos.jpeg["china"])
    assert after.status_code == 200 and after.json()["timing"]["batch_size"] == 1  # it rode alone
    assert slow_server.metric("niff_batch_size_count", model=TINY) == batches + 1


def test_client_disconnect_drops_its_pending_work(slow_server: ServerProcess, photos: Photos) -> None:
    cancelled = slow_server.metric("niff_requests_dropped_total", model=TINY, reason="cancelled")
    batches = slow_server.metric("niff_batch_size_count", model=TINY)
    with httpx.Client(base_url=slow_server.url, timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(CLASSIFY, content=photos.jpeg["flower"])
    slow_server.wait_for_metric("niff_requests_dropped_total", cancelled + 1, model=TINY, reason="cancelled")
    assert slow_server.metric("niff_queue_depth", model=TINY) == 0
    with slow_server.client() as client:
        after = client.post(CLASSIFY, content=photos.jpeg["china"])
    assert after.status_code == 200 and after.json()["timing"]["batch_size"] == 1
    assert slow_server.metric("niff_batch_size_count", model=TINY) == batches + 1


def test_two_times_overload_every_request_is_answered(slow_server: ServerProcess, photos: Photos) -> None:
    """Twice the queue's capacity at once: every request gets 200 or 503, none is dropped or fails."""
    barrier = threading.Barrier(8)

    def request(client: httpx.Client) -> httpx.Response:
        barrier.wait(30)
        return client.post(CLASSIFY, content=photos.jpeg["china"])

    statuses = sorted(f.result(60).status_code for f in slow_server.in_background([request] * 8))
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 4
