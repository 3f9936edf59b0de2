"""Per-request bookkeeping as plain ASGI middleware: request id, access log, HTTP metrics, last-resort 500.

Plain ASGI (not ``BaseHTTPMiddleware``) so the endpoint keeps the raw ``receive`` channel it needs to
notice client disconnects. An error answered before the request body was read (an unknown model, a bad
key, a body over the limit) first reads the rest of a modest body: closing a socket with unread data makes
the kernel reset the connection, and the client would lose the answer. What is left of a larger body is
never read: the answer says ``Connection: close`` and the connection closes after it, where keeping it
alive would read and discard the rest, however large.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from niff_serve.core.logs import request_id_var, valid_request_id
from niff_serve.core.metrics import Metrics

access_logger = logging.getLogger("niff_serve.access")
logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# How much of an unread body an error answer waits for (larger uploads are cut off).
_DRAIN_BYTES = 1 << 20
_DRAIN_SECONDS = 2.0


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        body_read = False

        async def receive_tracked() -> Message:
            nonlocal body_read
            message = await receive()
            body_read = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, request_id)
                if status >= 400 and not body_read:
                    await _drain(receive_tracked, lambda: body_read)
                    if not body_read:
                        headers["connection"] = "close"
            await send(message)

        self.metrics.requests_in_progress.inc()
        try:
            await self.app(scope, receive_tracked, send_with_id)
        except Exception:  # the last line of defence: a bug must not become a dropped connection
            logger.exception("unhandled error")
            status = 500
            if not response_started:
                response = JSONResponse({"error": "internal server error"}, status_code=500)
                await response(scope, receive_tracked, send_with_id)
        finally:
            self.metrics.requests_in_progress.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path_format", "unmatched")
            method = scope["method"]
            self.metrics.count_request(template, method, status, elapsed)
            access_logger.info(
                "%s %s %d",
                method,
                scope["path"],
                status,
                extra={"status": status, "duration_ms": round(elapsed * 1000, 2), "route": template},
            )
            request_id_var.reset(token)


async def _drain(receive: Receive, done: Callable[[], bool]) -> None:
    """Read and drop what is left of the request body, up to a bound in size and time."""

    async def drop() -> None:
        size = 0
        while not done() and size <= _DRAIN_BYTES:
            size += len((await receive()).get("body", b""))

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(drop(), _DRAIN_SECONDS)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return valid_request_id(value.decode("latin-1"))
    return None
