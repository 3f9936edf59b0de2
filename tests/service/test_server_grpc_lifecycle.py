"""The gRPC endpoint's life in the real process: it drains with HTTP on SIGTERM, it can be turned off, and a
port it cannot have stops start-up with one line."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .conftest import TINY, Photos, Reference, ServerProcess, classify, free_port


def grpc_classify(url: str, data: bytes) -> np.ndarray:
    with triton.InferenceServerClient(url) as client:
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        return client.infer(TINY, [tensor]).as_numpy("logits")


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{condition.__name__} did not happen within {timeout} s"
        time.sleep(0.02)


def test_sigterm_drains_grpc_and_http_alike(
    tiny_only_repository: Path, tmp_path: Path, photos: Photos, reference: Reference
) -> None:
    """Requests wait 8 s for a batch; SIGTERM comes while they wait, the drain 2 s later."""
    server = ServerProcess(
        tiny_only_repository,
        tmp_path / "server.log",
        *("--max-batch-size", "8", "--max-queue-size", "16", "--max-batch-delay-ms", "8000"),
        "--shutdown-delay-s",
        "2",
    )
    pool = ThreadPoolExecutor(4)
    channel = grpc.insecure_channel(server.grpc_url)
    try:
        server.wait_ready()
        probe = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert probe.ServerReady(service_pb2.ServerReadyRequest()).ready  # connected before SIGTERM
        datas = [photos.jpeg["china"], photos.jpeg["flower"]]
        over_grpc = [pool.submit(grpc_classify, server.grpc_url, data) for data in datas]
        over_http = server.in_background([classify(data) for data in datas])
        server.wait_for_metric("niff_queue_depth", 4, model=TINY)
        server.process.send_signal(signal.SIGTERM)

        answers: list[bool | grpc.StatusCode] = []

        def new_calls_refused() -> bool:
            try:
                answers.append(probe.ServerReady(service_pb2.ServerReadyRequest(), timeout=5).ready)
            except grpc.RpcError as error:
                answers.append(error.code())
            return answers[-1] == grpc.StatusCode.UNAVAILABLE

        wait_until(new_calls_refused)
        assert False in answers[: answers.index(grpc.StatusCode.UNAVAILABLE)], "not-ready was never reported"
        # A new connection is refused too.
        with grpc.insecure_channel(server.grpc_url) as fresh, pytest.raises(grpc.RpcError) as refused:
            service_pb2_grpc.GRPCInferenceServiceStub(fresh).ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        def http_refused() -> bool:
            try:
                httpx.get(f"{server.url}/healthz", timeout=5)
            except httpx.ConnectError:
                return True
            return False

        wait_until(http_refused)
        for data, future in zip(datas, over_grpc, strict=True):
            expected = reference.logits(TINY, reference.preprocess(TINY, data)[None])
            np.testing.assert_allclose(future.result(60), expected, rtol=1e-5, atol=1e-5)
        assert [f.result(60).status_code for f in over_http] == [200, 200]
        assert server.process.wait(60) == -signal.SIGTERM
        messages = [r["message"] for r in server.log_records()]
        draining = messages.index("gRPC draining: new calls are refused, calls in flight finish")
        answered = [i for i, message in enumerate(messages) if message == "gRPC ModelInfer OK"]
        assert len(answered) == 2 and min(answered) > draining  # in flight when the drain began, then answered
        assert messages[-1].startswith("Finished server process")
    finally:
        channel.close()
        pool.shutdown(wait=False)
        server.stop(signal.SIGKILL)


def test_grpc_port_zero_turns_grpc_off(start_server: Callable[..., ServerProcess], tiny_only_repository: Path) -> None:
    server = start_server(tiny_only_repository, "--grpc-port", "0")
    with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError) as error:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert not any("gRPC" in r["message"] for r in server.log_records())


def test_worker_processes_share_the_grpc_port_and_their_statistics(
    start_server: Callable[..., ServerProcess], tiny_only_repository: Path, photos: Photos, reference: Reference
) -> None:
    """Each request on a connection of its own: the kernel spreads them over both workers, and the
    statistics and metrics still count every one."""
    server = start_server(tiny_only_repository, "--workers", "2")
    wait_until(lambda: sum(r["message"].startswith("gRPC listening") for r in server.log_records()) == 2)
    http = triton_http.InferenceServerClient(server.url.removeprefix("http://"))

    def stats() -> dict:
        return http.get_inference_statistics(TINY)["model_stats"][0]

    before = stats()
    datas = [photos.jpeg["china"], photos.jpeg["flower"], photos.encode("china", "PNG", "L")] * 4
    for data in datas:
        expected = reference.logits(TINY, reference.preprocess(TINY, data)[None])
        np.testing.assert_allclose(grpc_classify(server.grpc_url, data), expected, rtol=1e-5, atol=1e-5)
    for _ in range(4):
        with server.client() as client:
            assert classify(datas[0])(client).status_code == 200
    after = stats()
    http.close()
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 16
    assert after["inference_count"] == before["inference_count"] + 16
    assert server.metric("niff_grpc_requests_total", method="ModelInfer", code="OK") == 12


@pytest.mark.parametrize("workers", ["1", "2"])
def test_busy_grpc_port_stops_start_up_with_one_line(tiny_only_repository: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "niff_serve", "--model-repository", str(tiny_only_repository)]
        command += ["--port", str(free_port()), "--grpc-port", str(port), "--device", "cpu", "--workers", workers]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"niff-serve: error: start-up failed: cannot listen for gRPC on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr + result.stdout
