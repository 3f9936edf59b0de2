"""One worker process of a multi-process server (started by :mod:`niff_serve.workers`, not by hand)."""

from __future__ import annotations

import socket
import sys

from niff_serve.cli import load_settings, serve
from niff_serve.logs import configure_logging


def main() -> None:
    listener = socket.socket(fileno=int(sys.argv[1]))
    settings = load_settings([])
    configure_logging(settings.log_level)
    serve(settings, sockets=[listener])


if __name__ == "__main__":
    main()
