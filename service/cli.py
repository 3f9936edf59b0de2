"""``niff-serve``: validate settings and the model repository, then run uvicorn until SIGTERM.

Options mirror :class:`~niff_serve.settings.Settings` one to one (``--max-batch-size`` is
``NIFF_MAX_BATCH_SIZE``) and override the environment. Bad settings or an unusable model folder end
the process with one line on stderr and exit status 2; a port that cannot be bound (checked before any
model loads), or a model that fails to load or warm up, ends it with status 1. SIGTERM and Ctrl-C (SIGINT)
both drain: no new connections, the requests in flight are answered; Ctrl-C then exits with status 130.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import Literal, NoReturn, get_args, get_origin

import uvicorn
from pydantic import ValidationError
from pydantic_settings import SettingsError

from niff_contract import ContractError, describe_errors, scan_repository
from niff_serve.app import create_app
from niff_serve.backends import choose_backend
from niff_serve.connections import ConnectionLimits, check_port, limited_protocol, raise_open_file_limit
from niff_serve.errors import ConfigurationError
from niff_serve.grpc_server import check_grpc_port
from niff_serve.liveness import WorkerLiveness
from niff_serve.logs import configure_logging
from niff_serve.memory import release_freed_memory
from niff_serve.runtime import ServiceState
from niff_serve.settings import ENV_PREFIX, Settings, env_name, unknown_env_names
from niff_serve.version import __version__
from niff_serve.workers import supervise, worker_count

PROG = "niff-serve"
logger = logging.getLogger(__name__)


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """One option per setting, its help text taken from the setting's description."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve every model folder of a model repository over HTTP (REST classify and KServe v2) "
        "and gRPC (KServe v2).",
        epilog="Every option can also be set by its environment variable; the command line wins.",
    )
    for name, field in Settings.model_fields.items():
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = "see above"
        else:
            default = "unset" if field.default is None else f"{field.default}".lower()
        help_text = f"{field.description} [env {env_name(name)}; default: {default}]"
        if field.annotation is bool:  # --ui / --no-ui
            parser.add_argument(
                option_name(name),
                dest=name,
                default=argparse.SUPPRESS,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
            continue
        parser.add_argument(
            option_name(name),
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices,
            metavar=name.split("_")[-1].upper() if choices is None else None,
            help=help_text,
        )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the command line; exits with a message when invalid."""
    args = build_parser().parse_args(argv)
    try:
        return Settings(**vars(args))
    except ValidationError as exc:
        errors = describe_errors(exc.errors(), lambda f: f"{option_name(f)} / {env_name(f)}")
        fail(f"invalid settings: {errors}{_unknown_names()}")
    except SettingsError as exc:
        fail(f"invalid settings: {exc}{_unknown_names()}")


def _unknown_names() -> str:
    """The NIFF_* variables no setting reads, likely misspelt (NIFF_MODEL_REPO), as an addition to an error."""
    known = [name.upper() for name in Settings.model_fields]
    notes = []
    for name in unknown_env_names():
        close = difflib.get_close_matches(name.upper().removeprefix(ENV_PREFIX), known, n=1)
        notes.append(f"{name} is not a known setting" + (f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""))
    return "".join(f"; {note}" for note in notes)


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(status)


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


def main(argv: Sequence[str] | None = None) -> None:
    """The ``niff-serve`` console script: check everything that can be checked cheaply, then serve."""
    settings = load_settings(argv)
    try:
        devices = {choose_backend(folder, settings)[1] for folder in scan_repository(settings.model_repository)}
    except ContractError as exc:
        fail(str(exc))
    configure_logging(settings.log_level)
    workers = worker_count(settings, "cuda" if "cuda" in devices else "cpu")
    try:
        check_ports(settings)
        if workers == 1:
            serve(settings)
            return
        status = supervise(settings, workers)
    except ConfigurationError as exc:  # a port taken since its check
        fail(f"start-up failed: {exc}", status=1)
    if status:
        raise SystemExit(status)


def check_ports(settings: Settings) -> None:
    """Bind the HTTP and gRPC ports once each before any model loads: a port that something holds stops
    start-up with one line (several workers then share the gRPC port, each with SO_REUSEPORT)."""
    check_port(settings.host, settings.port)
    if settings.grpc_port:
        check_grpc_port(settings)


def serve(
    settings: Settings, sockets: list[socket.socket] | None = None, liveness: WorkerLiveness | None = None
) -> None:
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
