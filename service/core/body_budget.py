"""What request bodies may hold in memory, all requests together, and the encoded images found in them.

Every transport claims a request's bytes here before reading them (HTTP bodies, gRPC messages).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from niff_serve.core.errors import PayloadTooLarge, ServiceUnavailable
from niff_serve.core.memory import trim_after

_DECIMAL = re.compile(r"[0-9]{1,18}")


def parse_length(text: str | None) -> int | None:
    """A byte count sent in a header: ASCII digits only (``str.isdigit`` also accepts '²')."""
    return int(text) if text is not None and _DECIMAL.fullmatch(text) else None


class BodyBudget:
    """Bytes of request bodies (and what parsing them costs) held in memory, by all requests together.

    A request claims its declared length before a byte is read, or chunk by chunk when the length is
    not declared, and returns everything when it ends; a claim beyond what is free now is a 503 with
    Retry-After, so concurrent large uploads queue at the client instead of in this process, and a
    request that needs more than the whole budget is a 413 (retrying cannot help). Claims come from the
    event loop and from parsing threads, hence the lock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def share(self) -> Iterator[BodyShare]:
        """One request's share, returned when the block ends however it ends."""
        share = BodyShare(self)
        try:
            yield share
        finally:
            with self._lock:
                self.used -= share.size
            trim_after(share.size)

    def _claim(self, size: int, held: int) -> None:
        if held + size > self.capacity:
            raise PayloadTooLarge(
                f"this request needs {held + size} bytes of memory for its body and its parsing; the server's "
                f"budget for all requests together is {self.capacity}"
            )
        with self._lock:
            if self.used + size > self.capacity:
                raise ServiceUnavailable(
                    f"the server holds {self.used} bytes of request bodies and this request needs {size} more "
                    f"(budget {self.capacity}); retry shortly"
                )
            self.used += size


class BodyShare:
    """What one request holds of a :class:`BodyBudget`."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.size = 0

    def claim(self, size: int) -> None:
        self._budget._claim(size, self.size)
        self.size += size


@dataclass(frozen=True)
class Upload:
    """One encoded image and the name the client gave it (multipart filename), for error messages."""

    data: bytes
    filename: str | None = None
