"""One worker process of a multi-process server (started by :mod:`niff_serve.process.workers`, not by hand).

``python -m niff_serve.process.worker LISTENER_FD SUPERVISOR_PID BEAT_FD PULSE_FD``: serve the inherited listening
socket with the settings in the environment, beating to the supervisor on BEAT_FD and hearing it on PULSE_FD
(:mod:`niff_serve.process.liveness`).

A worker ignores SIGINT from its first moment: Ctrl-C in a terminal reaches the whole process group, and
the supervisor forwards it as SIGTERM, the one signal a worker drains on.
"""

from __future__ import annotations

import signal
import socket
import sys

signal.signal(signal.SIGINT, signal.SIG_IGN)  # before the imports below, which take a while

from niff_serve.core.logs import configure_logging  # noqa: E402
from niff_serve.process.child import follow_supervisor, read_settings  # noqa: E402
from niff_serve.process.liveness import WorkerLiveness  # noqa: E402
from niff_serve.process.serving import serve  # noqa: E402


def main() -> None:
    supervisor_pid, listener_fd, beat_fd, pulse_fd, settings_fd = map(int, sys.argv[1:6])
    follow_supervisor(supervisor_pid)
    listener = socket.socket(fileno=listener_fd)
    settings = read_settings(settings_fd)
    configure_logging(settings.log_level)
    liveness = WorkerLiveness(beat_fd, pulse_fd, settings.liveness_timeout_s)
    serve(settings, sockets=[listener], liveness=liveness)


if __name__ == "__main__":
    main()
