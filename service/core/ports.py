"""Listening addresses, and the check that a port is free before any model loads (HTTP and gRPC alike)."""

from __future__ import annotations

import os
import socket

from niff_serve.core.errors import ConfigurationError


def listen_address(host: str, port: int) -> str:
    """``host:port`` as people write it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def cannot_listen(host: str, port: int, error: OSError, protocol: str = "") -> ConfigurationError:
    """The one-line start-up error of a port that cannot be bound (``protocol``: "gRPC"; HTTP unnamed)."""
    where = f" for {protocol}" if protocol else ""
    # The errno's own words: socket.create_server's strerror repeats the address. (getaddrinfo's are < 0.)
    reason = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror or str(error)
    return ConfigurationError(f"cannot listen{where} on {listen_address(host, port)}: {reason}")


def check_port(host: str, port: int, protocol: str = "") -> None:
    """Bind ``host:port`` once and let go, as the server will (SO_REUSEADDR, without SO_REUSEPORT), so that a
    port something else holds stops start-up with one line before any model loads, not with a traceback after."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise cannot_listen(host, port, exc, protocol) from None
