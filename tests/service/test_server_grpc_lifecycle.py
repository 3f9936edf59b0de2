"""The gRPC endpoint's life in the real process: it drains with HTTP on SIGTERM, it can be turned off, worker
processes share its port, and a port it cannot have stops start-up with one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from polling import wait_until
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .conftest import TINY, Photos, Reference, ServerProcess, classify, free_port, workers_of


def grpc_classify(url: str, data: bytes) -> np.ndarray:
    with triton.InferenceServerClient(url) as client:
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([data], dtype=object))
        return client.infer(TINY, [tensor]).as_numpy("logits")


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

        wait_until(new_calls_refused, "new gRPC calls still accepted")
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

        wait_until(http_refused, "HTTP still accepting connections")
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


def established_connections(pid: int, port: int) -> int:
    """TCP connections to local ``port`` that process ``pid`` holds open (its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    count = 0
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            count += local_port == port and state == "01" and inode in inodes  # 01: ESTABLISHED
    return count


def test_worker_processes_share_the_grpc_port_and_count_each_others_requests(
    start_server: Callable[..., ServerProcess], tiny_only_repository: Path, photos: Photos, reference: Reference
) -> None:
    """gRPC clients reach both workers (each client a connection of its own, pinned to the worker the kernel
    chose), and either worker's ModelStatistics counts the requests that both served."""
    server = start_server(tiny_only_repository, "--workers", "2")
    wait_until(lambda: "serving with 2 worker processes" in server.log(), "the two workers did not both serve")
    workers = workers_of(server)
    assert len(workers) == 2
    data = photos.jpeg["china"]
    expected = reference.logits(TINY, reference.preprocess(TINY, data)[None])
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    # A subchannel pool of its own: by default gRPC shares one connection among a process's channels.
    own_connection = [("grpc.use_local_subchannel_pool", 1)]

    def statistics(client: triton.InferenceServerClient) -> service_pb2.ModelStatistics:
        [stats] = client.get_inference_statistics(TINY).model_stats
        return stats

    with ExitStack() as stack:
        client_of: dict[int, triton.InferenceServerClient] = {}  # worker pid -> a client connected to it
        calls = 0
        while len(client_of) < 2:
            assert calls < 32, f"the kernel gave all {calls} connections to one worker"
            held = {pid: established_connections(pid, server.grpc_port) for pid in workers}
            client = stack.enter_context(triton.InferenceServerClient(server.grpc_url, channel_args=own_connection))
            np.testing.assert_allclose(client.infer(TINY, [image]).as_numpy("logits"), expected, rtol=1e-5, atol=1e-5)
            calls += 1
            [worker] = [pid for pid in workers if established_connections(pid, server.grpc_port) > held[pid]]
            client_of.setdefault(worker, client)
        first, second = (client_of[pid] for pid in workers)
        for _ in range(3):  # more on one worker than on the other
            first.infer(TINY, [image])
        calls += 3
        with server.client() as http:
            assert classify(data)(http).status_code == 200
        from_first, from_second = statistics(first), statistics(second)

    assert from_first == from_second
    assert from_first.inference_stats.success.count == calls + 1
    assert from_first.inference_count == calls + 1
    assert from_first.inference_stats.fail.count == 0
    assert sum(b.batch_size * b.compute_infer.count for b in from_first.batch_stats) >= calls + 1
    assert server.metric("niff_grpc_requests_total", method="ModelInfer", code="OK") == calls


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
