"""Several worker processes behind one port: one view of the metrics, every in-flight request answered on
SIGTERM whichever worker holds it, and a worker that dies taking the server down for the orchestrator."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import httpx
import pytest
from polling import wait_until

from .conftest import TINY, Photos, Reference, ServerProcess, classify, workers_of


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an exited one may linger as a zombie until reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def pair(tiny_only_repository: Path, tmp_path: Path) -> ServerProcess:
    server = ServerProcess(
        tiny_only_repository,
        tmp_path / "server.log",
        *("--workers", "2", "--max-batch-size", "8", "--max-queue-size", "16", "--max-batch-delay-ms", "1500"),
    )
    server.wait_ready()
    wait_until(lambda: "serving with 2 worker processes" in server.log(), "the two workers did not both serve")
    workers = workers_of(server)
    assert len(workers) == 2
    yield server
    server.stop(signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_metrics_are_one_view_and_sigterm_drains_every_worker(
    pair: ServerProcess, photos: Photos, reference: Reference
) -> None:
    datas = [photos.jpeg["china"], photos.jpeg["flower"]] * 4
    in_flight = pair.in_background([classify(data) for data in datas])
    # The 1.5 s batching window holds them queued; whichever worker answers the scrape sees all eight.
    pair.wait_for_metric("niff_queue_depth", len(datas), model=TINY)
    workers = workers_of(pair)
    pair.process.send_signal(signal.SIGTERM)
    for data, future in zip(datas, in_flight, strict=True):
        reference.assert_answers(TINY, data, future.result(60))
    assert pair.process.wait(60) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_counters_add_up_across_workers(pair: ServerProcess, photos: Photos) -> None:
    with pair.client() as client:
        for _ in range(6):
            assert client.post(f"/v1/models/{TINY}:classify", content=photos.jpeg["flower"]).status_code == 200
    route = "/v1/models/{name}:classify"
    counts = {pair.metric("niff_http_requests_total", route=route, status="200") for _ in range(6)}
    assert counts == {6.0}  # every scrape, answered by either worker, counts the requests of both
    assert pair.metric("niff_model_ready", model=TINY) == 1


def test_a_dying_worker_stops_the_server(pair: ServerProcess) -> None:
    victim, survivor = workers_of(pair)
    os.kill(victim, signal.SIGKILL)
    assert pair.process.wait(60) == 1
    wait_until(lambda: not Path(f"/proc/{survivor}").exists(), "the other worker outlived the supervisor")
    assert "exited with -9; stopping the others" in pair.log()


def test_workers_do_not_outlive_a_killed_supervisor(pair: ServerProcess) -> None:
    """SIGKILL (or the OOM killer) gives the supervisor no chance to forward anything."""
    workers = workers_of(pair)
    pair.process.kill()
    pair.process.wait(60)
    for pid in workers:
        wait_until(lambda pid=pid: not running(pid), f"worker {pid} outlived its supervisor")


def test_a_stopped_worker_stops_the_server(pair: ServerProcess) -> None:
    """SIGSTOP: the worker holds the socket but answers nothing, while the other one answers the probes."""
    victim, survivor = workers_of(pair)
    os.kill(victim, signal.SIGSTOP)
    assert pair.process.wait(60) == 1
    wait_until(lambda: not running(survivor), "the other worker outlived the supervisor")
    wait_until(lambda: not running(victim), "the stopped worker was not killed")
    assert f"worker {victim} sent no heartbeat for" in pair.log()


def test_a_stopped_supervisor_makes_the_workers_report_not_ready(pair: ServerProcess) -> None:
    """Nobody would notice a failing worker then: the pod leaves the load balancer until the supervisor is back."""

    def ready() -> int:
        return httpx.get(f"{pair.url}/v2/health/ready", timeout=10).status_code

    os.kill(pair.process.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: ready() == 503, "the workers stayed ready without their supervisor")
        assert httpx.get(f"{pair.url}/healthz", timeout=10).status_code == 200  # alive: not a reason to restart
        # Logged by each worker's beat loop, which looks every 0.5 s: possibly after the first 503 answer.
        wait_until(lambda: "no beat from the supervisor" in pair.log(), "no worker logged the silent supervisor")
    finally:
        os.kill(pair.process.pid, signal.SIGCONT)
    wait_until(lambda: ready() == 200, "the workers did not become ready again")


def test_workers_get_their_settings_without_the_key_in_their_environment(
    tiny_only_repository: Path, tmp_path: Path, photos: Photos
) -> None:
    """The supervisor hands each worker its settings through a pipe: the API key is in no worker's environment
    or command line, and every worker still checks it (and serves the other settings given)."""
    key = "worker-settings-key-1234"
    server = ServerProcess(
        tiny_only_repository, tmp_path / "server.log", "--workers", "2", "--max-batch-size", "4", api_key=key
    )
    try:
        server.wait_ready()
        wait_until(lambda: "serving with 2 worker processes" in server.log(), "the two workers did not both serve")
        workers = workers_of(server)
        assert len(workers) == 2
        for pid in workers:
            environment = Path(f"/proc/{pid}/environ").read_bytes()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert key.encode() not in environment and b"NIFF_" not in environment
            assert key.encode() not in command
        data = photos.encode("china", "JPEG")
        # New connections each time, so both workers answer (the kernel spreads connections between them).
        for _ in range(6):
            with server.client() as client, httpx.Client(base_url=server.url, timeout=60) as anonymous:
                assert client.post(f"/v1/models/{TINY}:classify", content=data).status_code == 200
                assert anonymous.post(f"/v1/models/{TINY}:classify", content=data).status_code == 401
                assert client.get(f"/v1/models/{TINY}").json()["max_batch_size"] == 4
    finally:
        server.stop(signal.SIGKILL)


def test_a_worker_that_does_not_start_in_time_stops_the_server(tiny_only_repository: Path, tmp_path: Path) -> None:
    """A worker still not serving after startup_timeout_s (here: shorter than its imports take) is killed, and
    the server exits with status 1 and one line saying why."""
    server = ServerProcess(
        tiny_only_repository, tmp_path / "server.log", "--workers", "2", "--startup-timeout-s", "0.2"
    )
    assert server.process.wait(120) == 1
    assert "did not serve within startup_timeout_s (0.2 s)" in server.log()
    assert "Traceback" not in server.log()
