"""Serving in one process: the service state, its HTTP app and gRPC endpoint started and stopped together,
under uvicorn with a drain phase.

Models load and warm up in the app's lifespan start-up, and the server reports ready only after that.
The gRPC endpoint starts after the models, in the same event loop, and stops before them. SIGTERM and
Ctrl-C (SIGINT) both drain: readiness turns false, new connections stop, the requests in flight are
answered.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI

from niff_serve.core.memory import release_freed_memory
from niff_serve.core.settings import Settings
from niff_serve.core.state import ServiceState, Supervision
from niff_serve.grpc.predictor import remote_loader
from niff_serve.grpc.server import GrpcEndpoint
from niff_serve.http.app import http_app
from niff_serve.http.connections import ConnectionLimits, limited_protocol, raise_open_file_limit
from niff_serve.process.exit import fail, startup_reason

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, worker: bool = False) -> FastAPI:
    """The service app for ``settings``, its gRPC endpoint at ``app.state.grpc``; the models load when the app
    starts, not here.

    ``worker``: one of several processes serving the same ports.
    """
    state = ServiceState(settings) if settings.predictor is None else ServiceState(settings, remote_loader(settings))
    grpc = GrpcEndpoint(state, shared_port=worker)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await state.start()
            try:
                await grpc.start()
            except BaseException:
                await state.stop()
                raise
        except Exception as exc:
            state.startup_error = startup_reason(exc)
            logger.error("start-up failed: %s", state.startup_error)
            raise
        yield
        await grpc.stop()
        await state.stop()

    app = http_app(state, lifespan)
    app.state.grpc = grpc
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn with a drain phase before the usual graceful stop.

    On SIGTERM readiness turns false at once and the server keeps serving for ``delay_s`` (so load
    balancers stop routing to it); then it stops accepting connections and finishes the requests in
    flight. A second signal skips the rest of the delay. ``drain_also`` begins the drain of the
    other listener (gRPC) at the same moment as HTTP's. A worker's ``state.liveness`` tells its supervisor
    once the server accepts connections (its models loaded).

    Ctrl-C (SIGINT) drains as SIGTERM does. A worker (``worker``) ignores SIGINT: Ctrl-C in a terminal
    reaches the whole process group, and the supervisor forwards it as SIGTERM; heeding both would be a
    second signal, which makes uvicorn quit without draining.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        state: ServiceState,
        delay_s: float,
        drain_also: Callable[[], Awaitable[None]],
        worker: bool = False,
    ) -> None:
        super().__init__(config)
        self._state = state
        self._delay_s = delay_s
        self._drain_also = drain_also
        self._worker = worker

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._state.liveness is not None and not self.should_exit:
            self._state.liveness.ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        draining = self._drain_also()  # begins now; the app's lifespan waits for it before stopping the models
        await super().shutdown(sockets)
        await draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._worker and sig == signal.SIGINT:
            return
        stop = super().handle_exit
        if self._state.draining or self._delay_s == 0:
            self._state.begin_drain()
            stop(sig, frame)
            return
        self._state.begin_drain()

        def stop_after_delay() -> None:
            logger.info("not ready since SIGTERM %.1f s ago; now draining", self._delay_s)
            stop(sig, None)

        timer = threading.Timer(self._delay_s, stop_after_delay)
        timer.daemon = True
        timer.start()


def serve(settings: Settings, sockets: list[socket.socket] | None = None, liveness: Supervision | None = None) -> None:
    """Serve in this process, on ``sockets`` when given (a worker, beating to its supervisor through
    ``liveness``), else on the configured address."""
    release_freed_memory()
    app = create_app(settings, worker=sockets is not None)
    state: ServiceState = app.state.service
    state.liveness = liveness
    limits = ConnectionLimits(settings.max_header_bytes, settings.header_timeout_s, settings.max_connections)
    raise_open_file_limit(settings.max_connections)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=limited_protocol(limits),
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works
        log_config=None,
        access_log=False,
        lifespan="on",
        # Every request ends by its deadline, so in-flight work is done by then.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 2,
    )
    server = DrainingServer(config, state, settings.shutdown_delay_s, app.state.grpc.stop, worker=sockets is not None)
    try:
        server.run(sockets=sockets)
    except SystemExit:
        if state.startup_error is not None:
            fail(f"start-up failed: {state.startup_error}", status=1)
        raise
    except KeyboardInterrupt:
        # Ctrl-C: uvicorn has drained and stopped, then raised the SIGINT again, which asyncio's runner
        # turns into KeyboardInterrupt. The drain is over: exit as a shell reports an interrupted program.
        raise SystemExit(128 + signal.SIGINT) from None
