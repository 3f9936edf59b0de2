"""What every child process of the supervisor (a worker, the inference process) does first: follow the
supervisor, and read the settings it wrote for this process."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

from niff_serve.core.settings import Settings

_PR_SET_PDEATHSIG = 1


def follow_supervisor(supervisor_pid: int) -> None:
    """Drain and stop when the supervisor dies: killed outright (SIGKILL, OOM), it forwards no signal,
    and a worker left behind would keep serving the port on its own."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor_pid:  # it died before the line above took effect
        raise SystemExit(1)


def read_settings(fd: int) -> Settings:
    """The settings the supervisor wrote for this worker (:func:`niff_serve.process.workers.settings_message`)."""
    with os.fdopen(fd, "rb") as pipe:
        return Settings(**json.loads(pipe.read()))
