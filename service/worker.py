"""One worker process of a multi-process server (started by :mod:`niff_serve.workers`, not by hand).

``python -m niff_serve.worker LISTENER_FD SUPERVISOR_PID BEAT_FD PULSE_FD``: serve the inherited listening
socket with the settings in the environment, beating to the supervisor on BEAT_FD and hearing it on PULSE_FD
(:mod:`niff_serve.liveness`).

A worker ignores SIGINT from its first moment: Ctrl-C in a terminal reaches the whole process group, and
the supervisor forwards it as SIGTERM, the one signal a worker drains on.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

signal.signal(signal.SIGINT, signal.SIG_IGN)  # before the imports below, which take a while

from niff_serve.cli import load_settings, serve  # noqa: E402
from niff_serve.liveness import WorkerLiveness  # noqa: E402
from niff_serve.logs import configure_logging  # noqa: E402

_PR_SET_PDEATHSIG = 1


def follow_supervisor(supervisor_pid: int) -> None:
    """Drain and stop when the supervisor dies: killed outright (SIGKILL, OOM), it forwards no signal,
    and a worker left behind would keep serving the port on its own."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor_pid:  # it died before the line above took effect
        raise SystemExit(1)


def main() -> None:
    follow_supervisor(int(sys.argv[2]))
    listener = socket.socket(fileno=int(sys.argv[1]))
    settings = load_settings([])
    configure_logging(settings.log_level)
    liveness = WorkerLiveness(int(sys.argv[3]), int(sys.argv[4]), settings.liveness_timeout_s)
    serve(settings, sockets=[listener], liveness=liveness)


if __name__ == "__main__":
    main()
