"""Liveness between the supervisor and its worker processes: each side beats, each side notices silence.

A worker stopped (SIGSTOP) or hung in its event loop still holds the listening sockets: the kernel keeps
handing it connections that nobody answers, while the other workers answer the probes. So every worker
writes a byte to its supervisor from its event loop every :data:`BEAT_INTERVAL_S`, from start-up on (a
worker that is still loading its models beats too); a supervisor that hears nothing from one for
``liveness_timeout_s`` kills it and stops the server. The supervisor beats back on a pipe of its own: a
worker that hears nothing reports not-ready until it hears again, so a stopped supervisor (that would
not notice a failing worker either) takes the pod out of service.

On the worker->supervisor pipe, ``READY`` says the worker accepts connections, ``BEAT`` that it lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

logger = logging.getLogger(__name__)

BEAT_INTERVAL_S = 0.5
READY = b"R"
BEAT = b"."


def send(fd: int, message: bytes) -> None:
    """Write without ever blocking: a reader that has stopped reading must not stop the writer."""
    with contextlib.suppress(BlockingIOError, BrokenPipeError, InterruptedError):
        os.write(fd, message)


class WorkerLiveness:
    """The worker's side: beats to the supervisor, and whether the supervisor still beats back."""

    def __init__(self, beat_fd: int, pulse_fd: int, timeout_s: float) -> None:
        self._beat_fd = beat_fd
        self._pulse_fd = pulse_fd
        self._timeout_s = timeout_s
        self._last_pulse = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        os.set_blocking(beat_fd, False)
        os.set_blocking(pulse_fd, False)

    @property
    def supervisor_alive(self) -> bool:
        return time.monotonic() - self._last_pulse <= self._timeout_s

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._pulse_fd, self._on_pulse)
        self._task = loop.create_task(self._beat(), name="liveness")

    def ready(self) -> None:
        send(self._beat_fd, READY)

    def _on_pulse(self) -> None:
        with contextlib.suppress(BlockingIOError):
            if os.read(self._pulse_fd, 4096):
                self._last_pulse = time.monotonic()

    async def _beat(self) -> None:
        alive = True
        while True:
            send(self._beat_fd, BEAT)
            if alive != self.supervisor_alive:
                alive = not alive
                if alive:
                    logger.warning("the supervisor beats again: ready again")
                else:
                    logger.error("no beat from the supervisor for %.1f s: reporting not ready", self._timeout_s)
            await asyncio.sleep(BEAT_INTERVAL_S)


class ChildLiveness:
    """The supervisor's side for one worker: when it last beat, whether it serves, its pulse pipe."""

    def __init__(self, pid: int, beat_fd: int, pulse_fd: int) -> None:
        self.pid = pid
        self.beat_fd = beat_fd
        self.pulse_fd = pulse_fd
        self.started = self.last_beat = time.monotonic()
        self.ready = False
        self.closed = False
        os.set_blocking(beat_fd, False)
        os.set_blocking(pulse_fd, False)

    def read(self) -> None:
        """Take what the worker wrote; end of file when it has exited."""
        try:
            data = os.read(self.beat_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self.closed = True
            return
        self.last_beat = time.monotonic()
        self.ready = self.ready or READY in data

    def silent_for(self, now: float) -> float:
        return now - self.last_beat

    def close(self) -> None:
        for fd in (self.beat_fd, self.pulse_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def not_started(children: list[ChildLiveness], timeout_s: float) -> list[ChildLiveness]:
    """The children that have not served for ``timeout_s`` since they started (and have not exited)."""
    moment = time.monotonic()
    return [child for child in children if not (child.closed or child.ready) and moment - child.started > timeout_s]


def stale(children: list[ChildLiveness], timeout_s: float) -> list[ChildLiveness]:
    """The children that have not beaten for ``timeout_s`` (and have not exited)."""
    moment = time.monotonic()
    return [child for child in children if not child.closed and child.silent_for(moment) > timeout_s]
