"""Waiting for what a test asserts: poll for a state, bounded in time, never sleep a fixed time; and free ports
for the servers tests start."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], failure: str | Callable[[], str], timeout: float = 30) -> T:
    """Call ``condition`` until it returns something truthy, and return that; AssertionError after ``timeout``.

    ``failure`` says what did not happen (a callable is asked only then, so it can show the last state).
    """
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{failure() if callable(failure) else failure} (waited {timeout} s)")
        time.sleep(0.02)
    return result


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
