"""A ``niff-serve`` process for the load benchmarks: free ports, readiness, metrics, CPU time, stop."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its child processes (a server's worker and inference processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [pid, *(int(child) for child in children.read_text().split())]
    except OSError:
        return [pid]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU time of ``pids`` so far (processes gone since count nothing)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class ServerProcess:
    """``command`` (a niff-serve on ``port``), its log in a temporary file named after ``prefix``."""

    def __init__(
        self,
        command: list[str],
        port: int,
        env: dict[str, str],
        prefix: str,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self.command = command
        self.log = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn
        )

    def ready(self) -> bool:
        try:
            return self.get("/v2/health/ready")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def metric_samples(self, keep: Callable[[str, dict[str, str]], bool]) -> list[tuple[str, dict[str, str], float]]:
        """(name, labels, value) of the /metrics samples ``keep`` accepts."""
        text = self.get("/metrics")[1].decode()
        return [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if keep(sample.name, sample.labels)
        ]

    def batch_histogram(self, model: str) -> tuple[float, float]:
        """(sum, count) of the model's batch sizes so far, all its processes together."""
        wanted = ("niff_batch_size_sum", "niff_batch_size_count")
        values = {
            name: value
            for name, _, value in self.metric_samples(
                lambda name, labels: labels.get("model") == model and name in wanted
            )
        }
        return values.get(wanted[0], 0.0), values.get(wanted[1], 0.0)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server and its child processes so far."""
        return cpu_seconds(process_tree(self.process.pid))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
