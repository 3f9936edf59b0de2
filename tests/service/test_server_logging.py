"""Logging never blocks serving: a log reader that stops reading, or a stdout that cannot be written, costs
log lines (counted, and said so) but never requests."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import httpx
import numpy as np
from PIL import Image
from polling import wait_until

from niff_serve.core.logs import QUEUE_LINES, WRITE_BATCH_LINES

from .conftest import TINY, free_port

_F_GETPIPE_SZ = 1032  # Linux fcntl
_CLIENTS = 4
# An access line is longer than this (time, level, logger, message, request id, route, status, duration).
_SHORTEST_LINE = 150


def _overflowing(pipe_bytes: int) -> int:
    """More access lines than the pipe, the writer's batch and the log queue together hold."""
    return pipe_bytes // _SHORTEST_LINE + WRITE_BATCH_LINES + QUEUE_LINES + 200


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)).save(buffer, "PNG")
    return buffer.getvalue()


class Server:
    """``python -m niff_serve`` with stdout and stderr where the test says; talked to over HTTP only."""

    def __init__(self, repository: Path, stdout: int | IO[bytes], stderr: IO[bytes]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIFF_")}
        command = [sys.executable, "-m", "niff_serve", "--model-repository", str(repository)]
        command += ["--port", self.url.rsplit(":", 1)[1], "--grpc-port", str(free_port()), "--workers", "1"]
        command += ["--device", "cpu", "--backend-threads", "1", "--preprocess-workers", "2"]
        self.process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, f"the server exited with {self.process.returncode}"
            try:
                return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "the server did not become ready", timeout=120)

    def flood(self, count: int, prefix: str) -> list[int]:
        """``count`` requests from a few clients at once, each with its own request id; their statuses."""
        png = _png()

        def send(client: httpx.Client, i: int) -> int:
            headers = {"X-Request-ID": f"{prefix}-{i}"}
            if i % 4 == 0:
                response = client.post(f"/v1/models/{TINY}:classify", content=png, headers=headers)
            else:
                response = client.get("/v2/health/ready", headers=headers)
            return response.status_code

        def client_share(first: int) -> list[int]:
            with httpx.Client(base_url=self.url, timeout=30) as client:
                return [send(client, i) for i in range(first, count, _CLIENTS)]

        with ThreadPoolExecutor(_CLIENTS) as pool:
            return [status for share in pool.map(client_share, range(_CLIENTS)) for status in share]

    def healthz(self) -> int:
        return httpx.get(f"{self.url}/healthz", timeout=5, headers={"X-Request-ID": "healthz"}).status_code

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def test_a_log_reader_that_does_not_read_costs_log_lines_not_requests(repository: Path, tmp_path: Path) -> None:
    """stdout is a pipe nobody reads: once it and the log queue are full, lines are dropped, requests are
    still answered; when the reader comes back, a 'log lines dropped' record says how many went."""
    with (tmp_path / "stderr").open("wb") as stderr:
        server = Server(repository, subprocess.PIPE, stderr)
    assert server.process.stdout is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(server.process.stdout), daemon=True)  # type: ignore[arg-type]
    try:
        server.wait_ready()
        pipe_bytes = fcntl.fcntl(server.process.stdout.fileno(), _F_GETPIPE_SZ)
        count = _overflowing(pipe_bytes)
        statuses = server.flood(count, "flood")
        assert statuses == [200] * count
        assert server.healthz() == 200

        reader.start()  # the reader comes back: the queued lines, then the count of the dropped ones
        after = server.flood(8, "after")
        assert after == [200] * 8

        def records() -> list[dict]:
            return [json.loads(line) for line in list(lines)]

        def seen_after() -> bool:
            return {f"after-{i}" for i in range(8)} <= {r.get("request_id") for r in records()}

        wait_until(seen_after, lambda: f"the later requests' lines were not written: {lines[-5:]}", timeout=20)
    finally:
        status = server.stop()
        reader.join(10)
        server.process.stdout.close()
    assert status == -signal.SIGTERM  # uvicorn re-raises the signal once drained
    assert not reader.is_alive()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    # What was logged while draining is written before the re-raised signal ends the process.
    assert records[-1]["message"].startswith("Finished server process"), records[-3:]
    dropped = [r for r in records if r["message"] == "log lines dropped"]
    assert dropped and all(r["dropped"] > 0 and r["level"] == "warning" for r in dropped)
    # Every request's line was either written, with its request id (captured when it was logged), or counted.
    ids = {f"flood-{i}" for i in range(count)} | {"healthz"} | {f"after-{i}" for i in range(8)}
    written = [r for r in records if r.get("request_id") in ids]
    assert all(r["logger"] == "niff_serve.access" for r in written)
    assert len(written) + sum(r["dropped"] for r in dropped) == len(ids)
    # The dropped lines' count comes before the first line written after them.
    first_after = next(i for i, r in enumerate(records) if r.get("request_id", "").startswith("after-"))
    assert records.index(dropped[0]) < first_after


def test_a_full_stdout_costs_log_lines_not_requests(repository: Path, tmp_path: Path) -> None:
    """stdout on a full device: each write fails with ENOSPC. The server serves on, and stderr gets one short
    line saying how many lines were lost and why, not a traceback per line."""
    stderr_path = tmp_path / "stderr"
    with open("/dev/full", "wb") as full, stderr_path.open("wb") as stderr:
        server = Server(repository, full, stderr)
    try:
        server.wait_ready()
        assert server.flood(100, "full") == [200] * 100
        assert server.healthz() == 200
        wait_until(lambda: "log lines lost" in stderr_path.read_text(), "no line on stderr about the lost lines")
    finally:
        status = server.stop()
    assert status == -signal.SIGTERM
    report = stderr_path.read_text().splitlines()
    assert 1 <= len(report) <= 3, report
    for line in report:
        assert line.startswith("niff-serve: ") and "log lines lost: [Errno 28] No space left on device" in line
        assert len(line) < 120


def test_a_pipe_nobody_reads_does_not_hold_the_exit(repository: Path, tmp_path: Path) -> None:
    """The log writer is stuck in a write to a full pipe: SIGTERM still ends the process, promptly."""
    with (tmp_path / "stderr").open("wb") as stderr:
        server = Server(repository, subprocess.PIPE, stderr)
    assert server.process.stdout is not None
    try:
        server.wait_ready()
        pipe_bytes = fcntl.fcntl(server.process.stdout.fileno(), _F_GETPIPE_SZ)
        count = _overflowing(pipe_bytes)
        assert server.flood(count, "stuck") == [200] * count
        server.process.terminate()
        assert server.process.wait(20) == -signal.SIGTERM
    finally:
        server.stop()
        server.process.stdout.close()
