"""What the server holds while it runs: its models, worker pool and readiness, and their lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from niff_contract import scan_repository
from niff_serve.core.backends import load_backend
from niff_serve.core.body_budget import BodyBudget
from niff_serve.core.dataplane import DataPlane
from niff_serve.core.metrics import Metrics
from niff_serve.core.runtime import BackendLoader, ModelRuntime
from niff_serve.core.settings import Settings, warn_about_unknown_env

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Supervision(Protocol):
    """A worker process's beat to and from its supervisor (:class:`niff_serve.process.liveness.WorkerLiveness`)."""

    @property
    def supervisor_alive(self) -> bool: ...

    def start(self) -> None: ...

    def ready(self) -> None: ...


class ServiceState:
    """The app's runtime state: models, worker pool, readiness. Lives on ``app.state.service``."""

    def __init__(self, settings: Settings, loader: BackendLoader = load_backend, internal: bool = False) -> None:
        """``internal``: the split topology's inference process, whose clients are the front ends (they check the
        API key and record the requests; it records the batches)."""
        self.settings = settings
        self._loader = loader
        self.metrics = Metrics()
        self.body_budget = BodyBudget(settings.max_body_memory_bytes)
        self.models: dict[str, ModelRuntime] = {}
        self.dataplane = DataPlane(self.models, settings, self.body_budget, records_requests=not internal)
        self.internal = internal
        self.loaded = False
        self.draining = False
        self.startup_error: str | None = None
        # A worker process's beat to and from its supervisor (None when serving alone).
        self.liveness: Supervision | None = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def ready(self) -> bool:
        alive = self.liveness is None or self.liveness.supervisor_alive
        return self.loaded and not self.draining and alive

    async def offload(self, function: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound request work (decoding, parsing) on the worker pool, off the event loop."""
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def start(self) -> None:
        """Load and warm up every model (off the event loop), then start batching and report ready."""
        if self.liveness is not None:
            self.liveness.start()  # beats while the models load
        pool = self._pool = ThreadPoolExecutor(self.settings.preprocess_workers, thread_name_prefix="preprocess")
        try:
            for folder in await asyncio.to_thread(scan_repository, self.settings.model_repository):
                if folder.manifest.labels_sha256 is None:
                    logger.warning("model %r: niff.json has no labels_sha256: its labels are not checked", folder.name)
                metrics = self.metrics.for_model(folder.name)
                runtime = await asyncio.to_thread(ModelRuntime.load, folder, self.settings, metrics, pool, self._loader)
                self.models[folder.name] = runtime
                runtime.batcher.start()
                runtime.ready = True
                runtime.metrics.ready.set(1)
        except BaseException:
            await self.stop()
            raise
        self._warn_about_settings()
        self.loaded = True
        logger.info("ready", extra={"models": list(self.models)})

    def begin_drain(self) -> None:
        """Report not-ready from now on (SIGTERM); requests are still served until the server stops.

        Called from a signal handler, so it only sets a flag (logging there could re-enter the stream).
        """
        self.draining = True

    async def stop(self) -> None:
        """Finish everything admitted, then release the workers."""
        self.draining = True
        for runtime in self.models.values():
            await runtime.batcher.close()
            runtime.ready = False
            runtime.metrics.ready.set(0)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        logger.info("stopped", extra={"models": list(self.models)})

    def _warn_about_settings(self) -> None:
        settings = self.settings
        if settings.api_key is None and not self.internal:
            logger.warning("NIFF_API_KEY is not set: model endpoints are open to anyone who can reach the port")
        for runtime in self.models.values():
            if runtime.batcher.max_delay_s >= settings.request_timeout_s:
                logger.warning(
                    "model %r: its batch delay is not below request_timeout_s: lone requests will time out",
                    runtime.name,
                )
        warn_about_unknown_env(logger)
