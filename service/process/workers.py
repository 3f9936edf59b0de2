"""Serving from several processes: one listening socket, N worker processes, one supervisor.

Python runs one request's framework code at a time per process; worker processes spread that work
(HTTP parsing, routing, decoding, JSON) over every core. The supervisor binds the port once and passes
the socket to each worker (the kernel hands every new connection to one of them), forwards SIGTERM (and
Ctrl-C's SIGINT, as SIGTERM) so each worker drains its own requests, and keeps Prometheus metrics in one
shared directory so that any worker's ``/metrics`` shows the whole server. A worker that dies on its own,
or stops beating (stopped, hung), takes the server down (exit status 1): the orchestrator restarts the pod
rather than this process guessing why."""

from __future__ import annotations

import json
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

from niff_serve.core.devices import cuda_device_count
from niff_serve.core.metrics import PROMETHEUS_DIR_ENV
from niff_serve.core.ports import cannot_listen
from niff_serve.core.settings import Settings, warn_about_unknown_env
from niff_serve.process.liveness import BEAT, BEAT_INTERVAL_S, ChildLiveness, not_started, send, stale

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


def split_topology(settings: Settings, device: str) -> bool:
    """Whether front ends feed an inference process: asked for, or by default when a model runs on a GPU
    (where one process per device keeps the batches whole); never in front of a remote predictor."""
    if settings.predictor is not None:
        return False
    return settings.topology == "split" or (settings.topology == "auto" and device == "cuda")


def inference_count(settings: Settings, device: str) -> int:
    """Inference processes of the split topology: ``settings.inference_processes``, or one per visible GPU when
    a model runs on one (one on a CPU host)."""
    if settings.inference_processes is not None:
        return settings.inference_processes
    return max(1, cuda_device_count()) if device == "cuda" else 1


def worker_count(settings: Settings, device: str, split: bool = False) -> int:
    """``settings.workers``, or by default: split, one front end per available CPU (up to 8); replicated, one
    process per available CPU (up to 4) on CPU and one on a GPU.

    Replicated on a GPU, every process would hold its own CUDA context and copy of the model and form smaller
    batches, so one process feeds it unless told otherwise.
    """
    if settings.workers is not None:
        return settings.workers
    if split:
        return min(8, available_cpus())
    return 1 if device == "cuda" else min(4, available_cpus())


def worker_settings(settings: Settings, workers: int) -> Settings:
    """One worker's settings: the server's, serving alone in its process, with its share of the CPUs."""
    update: dict[str, object] = {"workers": 1}
    if settings.backend_threads == 0:
        update["backend_threads"] = max(1, available_cpus() // workers)
    return settings.model_copy(update=update)


def settings_message(settings: Settings) -> bytes:
    """``settings`` as JSON for a worker (:func:`niff_serve.process.worker.read_settings`), secrets included:
    it travels through a pipe only the worker can read, never through the environment or the command line."""
    values = settings.model_dump(mode="json")
    if settings.api_key is not None:
        values["api_key"] = settings.api_key.get_secret_value()
    return json.dumps(values).encode()


def worker_environment(metrics_dir: str) -> dict[str, str]:
    """A worker's environment: the supervisor's without NIFF_* settings (the worker gets its settings as an
    object), plus the shared metrics directory."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("NIFF_")}
    env[PROMETHEUS_DIR_ENV] = metrics_dir
    return env


# Until a worker's first beat (its imports: ONNX Runtime, torch for TorchScript), it may be silent this long.
FIRST_BEAT_GRACE_S = 120.0
_TICK_S = 0.25


class _Supervisor:
    """The children of one server (front-end workers and, in the split topology, the inference processes) and
    what the supervisor knows of them."""

    def __init__(self, settings: Settings, workers: int, listener: socket.socket, metrics_dir: str) -> None:
        self.settings = settings
        self.front_end_settings = worker_settings(settings, workers)
        self.env = worker_environment(metrics_dir)
        self.listener = listener
        self.metrics_dir = metrics_dir
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.lives: dict[int, ChildLiveness] = {}
        self.front_ends: list[int] = []
        self.inference: list[int] = []
        self.exited: set[int] = set()
        self.given_up: set[int] = set()
        self.stopping = False
        self._inference_stopped = False
        self.status = 0
        self._last_pulse = 0.0

    def spawn(self, count: int) -> None:
        """``count`` more front ends, serving the listening socket."""
        message = settings_message(self.front_end_settings)
        for _ in range(count):
            self.front_ends.append(self._start("niff_serve.process.worker", message, [self.listener.fileno()], []))

    def spawn_inference(self, sockets_dir: str, count: int, gpus: bool) -> None:
        """``count`` inference processes (split topology), each on a socket in ``sockets_dir`` and, on ``gpus``,
        each seeing one GPU; the front ends spawned after them share their batches among them."""
        # The socket's folder (0700) is the access control: the front ends check the API key.
        message = settings_message(self.settings.model_copy(update={"workers": 1, "api_key": None}))
        sockets = [os.path.join(sockets_dir, f"inference-{index}.sock") for index in range(count)]
        for index, path in enumerate(sockets):
            env = {**self.env, "CUDA_VISIBLE_DEVICES": str(index)} if gpus else self.env
            self.inference.append(self._start("niff_serve.process.inference", message, [], [path], env))
        # The front ends hand every request on at once: the inference processes form the batches, with the delay.
        update = {"predictor": ",".join(f"unix:{path}" for path in sockets), "max_batch_delay_ms": 0}
        self.front_end_settings = self.front_end_settings.model_copy(update=update)

    def _start(
        self,
        module: str,
        message: bytes,
        inherited: list[int],
        arguments: list[str],
        env: dict[str, str] | None = None,
    ) -> int:
        """``python -m module SUPERVISOR_PID *arguments *inherited BEAT PULSE SETTINGS``; its pid."""
        beat_read, beat_write = os.pipe()
        pulse_read, pulse_write = os.pipe()
        settings_read, settings_write = os.pipe()
        with os.fdopen(settings_write, "wb") as pipe:  # far below a pipe's buffer: never blocks
            pipe.write(message)
        fds = [*inherited, beat_write, pulse_read, settings_read]
        command = [sys.executable, "-m", module, str(os.getpid()), *arguments, *map(str, fds)]
        child = subprocess.Popen(command, env=env or self.env, pass_fds=fds)
        for fd in (beat_write, pulse_read, settings_read):
            os.close(fd)
        self.children[child.pid] = child
        self.lives[child.pid] = ChildLiveness(child.pid, beat_read, pulse_write)
        self.lives[child.pid].last_beat += FIRST_BEAT_GRACE_S
        return child.pid

    def stop_all(self) -> None:
        """SIGTERM to every front end; the inference processes get theirs once the front ends have all stopped
        (they drain through them)."""
        self.stopping = True
        for pid in self.front_ends:
            self._signal(pid)
        self._stop_inference_when_alone()

    def _stop_inference_when_alone(self) -> None:
        if not self.inference or self._inference_stopped:
            return
        if all(pid in self.exited for pid in self.front_ends):
            self._inference_stopped = True
            for pid in self.inference:
                self._signal(pid)

    def _signal(self, pid: int) -> None:
        child = self.children[pid]
        if pid not in self.exited and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def running(self) -> list[ChildLiveness]:
        return [life for pid, life in self.lives.items() if pid not in self.exited and pid not in self.given_up]

    def all_ready(self) -> bool:
        return all(life.ready for life in self.lives.values())

    def all_exited(self) -> bool:
        return len(self.exited) == len(self.children)

    def tick(self) -> None:
        """Read beats, beat back, reap exits, and kill a child that has gone silent or does not start."""
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
        settings = self.settings
        for life in stale(self.running(), settings.liveness_timeout_s):
            self._give_up(life, f"sent no heartbeat for {life.silent_for(now):.1f} s (stopped or hung)")
        for life in not_started(self.running(), settings.startup_timeout_s):
            self._give_up(life, f"did not serve within startup_timeout_s ({settings.startup_timeout_s:g} s)")
        if self.stopping:
            self._stop_inference_when_alone()

    def _name(self, pid: int) -> str:
        return f"the inference process {pid}" if pid in self.inference else f"worker {pid}"

    def _give_up(self, life: ChildLiveness, why: str) -> None:
        """Kill a child that cannot serve and stop the server (exit status 1), logging why once."""
        logger.error("%s %s; killing it and stopping the server", self._name(life.pid), why)
        self.children[life.pid].kill()
        self.given_up.add(life.pid)  # no longer running: reported once, reaped next
        self.status = self.status or 1
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
                logger.error("%s exited with %d; stopping the others", self._name(pid), child.returncode)
            self.status = child.returncode if child.returncode > 0 else 1
            self.stop_all()

    def close(self) -> None:
        for life in self.lives.values():
            life.close()


def supervise(settings: Settings, workers: int, inference: int = 0, gpus: bool = False) -> int:
    """Run ``workers`` front-end processes on one socket (and, in the split topology, ``inference`` processes
    that hold the models, one per GPU on ``gpus``) until they have all stopped; their exit status.

    The inference processes start first, then the first front end alone: a model that cannot load ends the
    server with that process's one error line, and the others start only once it serves. Once all have
    started, or the server is asked to stop before that, the supervisor lets go of the socket: when every
    front end has stopped accepting (the drain), connections are refused. It logs once all serve.
    Every child beats (:mod:`niff_serve.process.liveness`); one silent for ``liveness_timeout_s``, or not
    serving within ``startup_timeout_s``, is killed and the server stops, exit status 1; so does a child
    that exits on its own.
    """
    try:
        listener = socket.create_server((settings.host, settings.port), backlog=_BACKLOG)
    except OSError as exc:
        raise cannot_listen(settings.host, settings.port, exc) from None
    warn_about_unknown_env(logger)  # the children's environment has no NIFF_* names
    metrics_dir = tempfile.mkdtemp(prefix="niff-metrics-")
    sockets_dir = tempfile.mkdtemp(prefix="niff-inference-")  # 0700: only this user reaches the socket
    supervisor = _Supervisor(settings, workers, listener, metrics_dir)
    asked: int | None = None

    def forward(sig: int, frame: FrameType | None) -> None:
        # As SIGTERM: Ctrl-C sends SIGINT to the whole process group, children included, and they ignore it
        # (see niff_serve.process.worker); each then drains on this SIGTERM alone.
        nonlocal asked
        asked = asked or sig
        supervisor.stop_all()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        if inference:
            supervisor.spawn_inference(sockets_dir, inference, gpus)
        else:
            supervisor.spawn(1)
        announced = False
        while not supervisor.all_exited():
            supervisor.tick()
            if supervisor.stopping or len(supervisor.front_ends) == workers:
                listener.close()  # the front ends hold it (those that will ever run)
            if supervisor.stopping or announced or not supervisor.all_ready():
                continue
            if len(supervisor.front_ends) < workers:
                supervisor.spawn(1 if not supervisor.front_ends else workers - len(supervisor.front_ends))
                continue
            announced = True
            shape = f"front-end processes and {inference} inference process{'es' if inference > 1 else ''}"
            shape = shape if inference else "worker processes"
            logger.info("serving with %d %s", workers, shape, extra={"pids": list(supervisor.children)})
        if supervisor.status or asked is None:
            return supervisor.status
        return 128 + signal.SIGINT if asked == signal.SIGINT else 0  # Ctrl-C: a shell's usual 130
    finally:
        listener.close()
        supervisor.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(sockets_dir, ignore_errors=True)
