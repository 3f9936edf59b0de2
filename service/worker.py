"""One worker process of a multi-process server (started by :mod:`niff_serve.workers`, not by hand)."""

from __future__ import annotations

import os
import socket
import sys

from niff_serve.cli import load_settings, serve
from niff_serve.logs import configure_logging
from niff_serve.workers import READY_FD_ENV


def main() -> None:
    listener = socket.socket(fileno=int(sys.argv[1]))
    ready_fd = os.environ.pop(READY_FD_ENV, None)
    settings = load_settings([])
    configure_logging(settings.log_level)
    serve(settings, sockets=[listener], ready_fd=None if ready_fd is None else int(ready_fd))


if __name__ == "__main__":
    main()
