"""Serving from several processes: one listening socket, N worker processes, one supervisor.

Python runs one request's framework code at a time per process; worker processes spread that work
(HTTP parsing, routing, decoding, JSON) over every core. The supervisor binds the port once and passes
the socket to each worker (the kernel hands every new connection to one of them), forwards SIGTERM so
each worker drains its own requests, and keeps Prometheus metrics in one shared directory so that
any worker's ``/metrics`` shows the whole server. A worker that dies on its own takes the server down
(exit status 1): the orchestrator restarts the pod rather than this process guessing why.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from niff_serve.metrics import PROMETHEUS_DIR_ENV
from niff_serve.settings import Settings, env_name

logger = logging.getLogger(__name__)
_BACKLOG = 2048


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a Kubernetes limit)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def worker_count(settings: Settings, device: str) -> int:
    """``settings.workers``, or by default one process per available CPU (up to 4) on CPU, one on a GPU.

    On a GPU every process would hold its own CUDA context and copy of the model and form smaller
    batches, so one process feeds it unless told otherwise.
    """
    if settings.workers is not None:
        return settings.workers
    return 1 if device == "cuda" else min(4, available_cpus())


def worker_environment(settings: Settings, workers: int, metrics_dir: str) -> dict[str, str]:
    """The environment of a worker: every setting as its NIFF_* variable, one process's share of the CPUs."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("NIFF_")}
    values = settings.model_dump(exclude_none=True)
    values["workers"] = 1
    if settings.backend_threads == 0:
        values["backend_threads"] = max(1, available_cpus() // workers)
    if "api_key" in values:
        values["api_key"] = settings.api_key.get_secret_value()  # type: ignore[union-attr]
    env.update({env_name(name): str(value) for name, value in values.items()})
    env[PROMETHEUS_DIR_ENV] = metrics_dir
    return env


READY_FD_ENV = "NIFF_READY_FD"


def supervise(settings: Settings, workers: int) -> int:
    """Run ``workers`` worker processes on one socket until they have all stopped; their exit status.

    The first worker starts alone: a model that cannot load ends the server with that worker's one
    error line, and the others start only once it serves. Once all serve, the supervisor logs so and
    lets go of the socket: when every worker has stopped accepting (the drain), connections are refused.
    """
    listener = socket.create_server((settings.host, settings.port), backlog=_BACKLOG)
    metrics_dir = tempfile.mkdtemp(prefix="niff-metrics-")
    env = worker_environment(settings, workers, metrics_dir)
    command = [sys.executable, "-m", "niff_serve.worker", str(listener.fileno()), str(os.getpid())]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)

    def start(count: int) -> bool:
        """Start ``count`` workers; whether each of them came to serve."""
        read_end, write_end = os.pipe()
        ready_env = {**env, READY_FD_ENV: str(write_end)}
        fds = [listener.fileno(), write_end]
        children.extend(subprocess.Popen(command, env=ready_env, pass_fds=fds) for _ in range(count))
        os.close(write_end)
        with os.fdopen(read_end, "rb") as ready:
            return len(ready.read(count)) == count  # end of file first: a worker stopped before it served

    try:
        started = start(1) and start(workers - 1)
        listener.close()  # the workers hold it now
        if not started or stopping:
            asked = stopping  # a signal during start-up, not a worker that failed
            forward(signal.SIGTERM, None)
            codes = [child.wait() for child in children]
            return 0 if asked else next((code for code in codes if code > 0), 1)
        logger.info("serving with %d worker processes", workers, extra={"pids": [c.pid for c in children]})
        return _wait_for(children, metrics_dir, forward, lambda: stopping)
    finally:
        listener.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _wait_for(
    children: list[subprocess.Popen[bytes]],
    metrics_dir: str,
    stop_all: Callable[[int, FrameType | None], None],
    stopping: Callable[[], bool],
) -> int:
    """Reap workers until none is left; the first one to die unasked stops the rest and sets the status."""
    from prometheus_client import multiprocess

    status = 0
    remaining = set(children)
    while remaining:
        pid, code = os.wait()
        child = next((c for c in remaining if c.pid == pid), None)
        if child is None:
            continue
        remaining.discard(child)
        child.returncode = os.waitstatus_to_exitcode(code)
        multiprocess.mark_process_dead(pid, metrics_dir)
        if not stopping():
            logger.error("worker %d exited with %d; stopping the others", pid, child.returncode)
            status = child.returncode if child.returncode > 0 else 1
            stop_all(signal.SIGTERM, None)
    return status
