"""The inference process of the split topology (started by :mod:`niff_serve.process.workers`, not by hand).

``python -m niff_serve.process.inference SUPERVISOR_PID SOCKET BEAT_FD PULSE_FD SETTINGS_FD``: load every model
(the backends and their batchers live here, so each model's batches are formed from all front ends' requests)
and answer KServe v2 gRPC on the Unix socket SOCKET, tensors in shared memory. No HTTP, no public port:
the front ends are the only clients. It beats to the supervisor like a worker and says ready once its
models serve. SIGTERM (sent by the supervisor once every front end has drained) finishes the calls in
flight and stops.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)  # before the imports below, which take a while

import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from niff_serve.core.logs import configure_logging  # noqa: E402
from niff_serve.core.settings import Settings  # noqa: E402
from niff_serve.core.state import ServiceState  # noqa: E402
from niff_serve.grpc.server import GrpcEndpoint  # noqa: E402
from niff_serve.process.child import follow_supervisor, read_settings  # noqa: E402
from niff_serve.process.exit import fail, startup_reason  # noqa: E402
from niff_serve.process.liveness import WorkerLiveness  # noqa: E402

logger = logging.getLogger("niff_serve.process.inference")  # run as __main__


async def serve_models(settings: Settings, socket_path: str, liveness: WorkerLiveness) -> None:
    """Serve until SIGTERM; a model that cannot load ends the process with one line and status 1."""
    state = ServiceState(settings, internal=True)
    state.liveness = liveness
    endpoint = GrpcEndpoint(state, internal=f"unix:{socket_path}")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await state.start()
        await endpoint.start()
    except Exception as exc:
        await state.stop()
        fail(f"start-up failed: {startup_reason(exc)}", status=1)
    liveness.ready()
    logger.info("inference process serving", extra={"models": list(state.models), "socket": socket_path})
    await stop.wait()
    await endpoint.stop()
    await state.stop()


def main() -> None:
    supervisor_pid, socket_path = int(sys.argv[1]), sys.argv[2]
    beat_fd, pulse_fd, settings_fd = map(int, sys.argv[3:6])
    follow_supervisor(supervisor_pid)
    settings = read_settings(settings_fd)
    configure_logging(settings.log_level)
    liveness = WorkerLiveness(beat_fd, pulse_fd, settings.liveness_timeout_s)
    asyncio.run(serve_models(settings, socket_path, liveness))


if __name__ == "__main__":
    main()
