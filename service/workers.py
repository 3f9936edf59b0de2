"""Serving from several processes: one listening socket, N worker processes, one supervisor.

Python runs one request's framework code at a time per process; worker processes spread that work
(HTTP parsing, routing, decoding, JSON) over every core. The supervisor binds the port once and passes
the socket to each worker (the kernel hands every new connection to one of them), forwards SIGTERM (and
Ctrl-C's SIGINT, as SIGTERM) so each worker drains its own requests, and keeps Prometheus metrics in one
shared directory so that any worker's ``/metrics`` shows the whole server. A worker that dies on its own,
or stops beating (stopped, hung), takes the server down (exit status 1): the orchestrator restarts the pod
rather than this process guessing why."""

from __future__ import annotations

import logging
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from niff_serve.connections import cannot_listen
from niff_serve.liveness import BEAT, BEAT_INTERVAL_S, ChildLiveness, send, stale
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


# Until a worker's first beat (its imports: ONNX Runtime, torch for TorchScript), it may be silent this long.
FIRST_BEAT_GRACE_S = 120.0
_TICK_S = 0.25


class _Supervisor:
    """The workers of one server and what the supervisor knows of them."""

    def __init__(self, settings: Settings, listener: socket.socket, env: dict[str, str], metrics_dir: str) -> None:
        self.settings = settings
        self.listener = listener
        self.env = env
        self.metrics_dir = metrics_dir
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.lives: dict[int, ChildLiveness] = {}
        self.exited: set[int] = set()
        self.stopping = False
        self.status = 0
        self._last_pulse = 0.0

    def spawn(self, count: int) -> None:
        for _ in range(count):
            beat_read, beat_write = os.pipe()
            pulse_read, pulse_write = os.pipe()
            command = [sys.executable, "-m", "niff_serve.worker", str(self.listener.fileno()), str(os.getpid())]
            command += [str(beat_write), str(pulse_read)]
            fds = [self.listener.fileno(), beat_write, pulse_read]
            child = subprocess.Popen(command, env=self.env, pass_fds=fds)
            os.close(beat_write)
            os.close(pulse_read)
            self.children[child.pid] = child
            self.lives[child.pid] = ChildLiveness(child.pid, beat_read, pulse_write)
            self.lives[child.pid].last_beat += FIRST_BEAT_GRACE_S

    def stop_all(self, sig: int = signal.SIGTERM) -> None:
        self.stopping = True
        for pid, child in self.children.items():
            if pid not in self.exited and child.poll() is None:
                child.send_signal(sig)

    def running(self) -> list[ChildLiveness]:
        return [life for pid, life in self.lives.items() if pid not in self.exited]

    def tick(self) -> None:
        """Read beats, beat back, reap exits, and kill a worker that has gone silent."""
        running = self.running()
        readable, _, _ = select.select([life.beat_fd for life in running], [], [], _TICK_S)
        for life in running:
            if life.beat_fd in readable:
                life.read()
        now = time.monotonic()
        if now - self._last_pulse >= BEAT_INTERVAL_S:
            self._last_pulse = now
            for life in running:
                send(life.pulse_fd, BEAT)
        self._reap()
        for life in stale(self.running(), self.settings.liveness_timeout_s):
            logger.error(
                "worker %d sent no heartbeat for %.1f s (stopped or hung); killing it and stopping the server",
                life.pid,
                life.silent_for(now),
            )
            self.children[life.pid].kill()
            self.status = self.status or 1
            life.last_beat = float("inf")  # reported once; it is reaped next
            self.stop_all()

    def _reap(self) -> None:
        from prometheus_client import multiprocess

        for pid, child in self.children.items():
            if pid in self.exited or child.poll() is None:
                continue
            self.exited.add(pid)
            multiprocess.mark_process_dead(pid, self.metrics_dir)
            if self.stopping:
                continue
            if self.lives[pid].ready:
                logger.error("worker %d exited with %d; stopping the others", pid, child.returncode)
            self.status = child.returncode if child.returncode > 0 else 1
            self.stop_all()

    def close(self) -> None:
        for life in self.lives.values():
            life.close()


def supervise(settings: Settings, workers: int) -> int:
    """Run ``workers`` worker processes on one socket until they have all stopped; their exit status.

    The first worker starts alone: a model that cannot load ends the server with that worker's one
    error line, and the others start only once it serves. Once all have started, or the server is asked
    to stop before that, the supervisor lets go of the socket: when every worker has stopped accepting
    (the drain), connections are refused. It logs once all serve.
    Every worker beats (:mod:`niff_serve.liveness`); one silent for ``liveness_timeout_s`` is killed and
    the server stops, exit status 1.
    """
    try:
        listener = socket.create_server((settings.host, settings.port), backlog=_BACKLOG)
    except OSError as exc:
        raise cannot_listen(settings.host, settings.port, exc) from None
    metrics_dir = tempfile.mkdtemp(prefix="niff-metrics-")
    env = worker_environment(settings, workers, metrics_dir)
    supervisor = _Supervisor(settings, listener, env, metrics_dir)
    asked: int | None = None

    def forward(sig: int, frame: FrameType | None) -> None:
        # As SIGTERM: Ctrl-C sends SIGINT to the whole process group, workers included, and they ignore it
        # (see niff_serve.worker); each then drains on this SIGTERM alone.
        nonlocal asked
        asked = asked or sig
        supervisor.stop_all(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        supervisor.spawn(1)
        announced = False
        while len(supervisor.exited) < len(supervisor.children):
            supervisor.tick()
            if supervisor.stopping or len(supervisor.children) == workers:
                listener.close()  # the workers hold it (those that will ever run)
            ready = [life for life in supervisor.lives.values() if life.ready]
            if supervisor.stopping or announced or len(ready) < len(supervisor.children):
                continue
            if len(supervisor.children) < workers:
                supervisor.spawn(workers - 1)
                continue
            announced = True
            pids = list(supervisor.children)
            logger.info("serving with %d worker processes", workers, extra={"pids": pids})
        if supervisor.status or asked is None:
            return supervisor.status
        return 128 + signal.SIGINT if asked == signal.SIGINT else 0  # Ctrl-C: a shell's usual 130
    finally:
        listener.close()
        supervisor.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
