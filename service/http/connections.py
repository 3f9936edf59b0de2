"""Connection-level limits that uvicorn lacks: header size, header-read time, open connections, and a
graceful close of idle keep-alive connections at shutdown.

uvicorn's httptools protocol accepts headers of any size, waits forever for a client that connects and
sends nothing (or trickles its headers), and accepts connections until the process runs out of file
descriptors. This subclass adds the three bounds; everything else (keep-alive, pipelining, flow control)
stays uvicorn's. The header clock runs from the connection's start, and again from the first byte of each
further request on a kept-alive connection; between requests, uvicorn's own keep-alive timeout applies.

At shutdown uvicorn closes idle keep-alive connections at once: a request a client sent just before, still
unread in the socket, is then lost to a reset. Here an idle connection stays open for
``SHUTDOWN_LINGER_S`` more: a request that arrives is answered with ``Connection: close``.

The protocol subclasses uvicorn's internals (pinned in pyproject.toml, covered by the server tests).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)
# Descriptors the process needs besides client sockets: model files, the log, runtime threads' pipes.
_RESERVED_FILES = 256
# How long an idle keep-alive connection is still read after shutdown begins.
SHUTDOWN_LINGER_S = 2.0
# At most one log line per this many seconds about refused connections (a burst would write one per connection).
_REFUSAL_LOG_INTERVAL_S = 10.0


class _RefusalLog:
    """Refused connections, logged at most once per interval with the count since the last line."""

    def __init__(self) -> None:
        self.count = 0
        self.last = -_REFUSAL_LOG_INTERVAL_S

    def refused(self, limit: int, now: float) -> None:
        self.count += 1
        if now - self.last >= _REFUSAL_LOG_INTERVAL_S:
            logger.warning("refused %d connection(s) beyond the limit of %d open connections", self.count, limit)
            self.count = 0
            self.last = now


_refusals = _RefusalLog()


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    max_connections: int


def _plain_response(status: str, message: str) -> bytes:
    body = f'{{"error": "{message}"}}'.encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """One client connection; :func:`limited_protocol` binds the limits."""

    limits: ConnectionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._reading_headers = True
        self._request_begun = False
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._shutting_down = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            _refusals.refused(self.limits.max_connections, self.loop.time())
            self._refuse("503 Service Unavailable", "too many open connections; retry later")
            return
        self._start_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and self._header_bytes > self.limits.max_header_bytes:
            self._headers_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._request_begun = True
        if self._header_timer is None:
            self._start_header_clock()

    def on_headers_complete(self) -> None:
        # Exact size of what was parsed: a large header block that arrived in one read is caught here.
        parsed = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if parsed > self.limits.max_header_bytes:
            self._headers_too_large()
            return
        self._reading_headers = False
        self._request_begun = False
        self._header_bytes = 0
        self._stop_header_clock()
        super().on_headers_complete()
        if self._shutting_down and self.cycle is not None:
            self.cycle.keep_alive = False

    def shutdown(self) -> None:
        """Graceful shutdown (uvicorn calls it once the listeners are closed): a busy connection closes after
        its answer, as in uvicorn; an idle one after :data:`SHUTDOWN_LINGER_S`, so that a request already on
        its way is read and answered instead of reset."""
        self._shutting_down = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self.loop.call_later(SHUTDOWN_LINGER_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _headers_too_large(self) -> None:
        self._refuse(
            "431 Request Header Fields Too Large",
            f"the request line and headers exceed {self.limits.max_header_bytes} bytes",
        )

    def _start_header_clock(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._request_begun:
            self._refuse("408 Request Timeout", f"the headers did not arrive within {self.limits.header_timeout_s} s")
        elif not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: str, message: str) -> None:
        self._refused = True
        self._stop_header_clock()
        self._reading_headers = False
        if not self.transport.is_closing():
            self.transport.write(_plain_response(status, message))
            self.transport.close()


def limited_protocol(limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to pass as uvicorn's ``http`` option."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def raise_open_file_limit(connections: int) -> None:
    """Let the process hold ``connections`` sockets plus its own files, as far as the hard limit allows."""
    import resource

    wanted = connections + _RESERVED_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logger.warning(
            "the open-file limit (%d) is below max_connections + %d: connections beyond it will be refused "
            "by the operating system, not answered with 503",
            soft,
            _RESERVED_FILES,
        )
