"""A served model: its folder, loaded backend, preprocessing and batcher, and how images become its inputs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from niff_contract import ImageError, ModelFolder, Preprocessor, instance_groups
from niff_contract.images import (
    CorruptImage,
    EmptyImage,
    ImageShapeRefused,
    ImageTooCostly,
    ImageTooLarge,
    UnsupportedImage,
    load_image,
)
from niff_serve.core.backends import Backend, load_backend, warm_up
from niff_serve.core.batcher import BatchResult, DynamicBatcher
from niff_serve.core.body_budget import Upload
from niff_serve.core.deadline import Deadline
from niff_serve.core.errors import (
    BadRequest,
    ConfigurationError,
    PayloadTooLarge,
    ServiceError,
    UnprocessableContent,
    UnsupportedMediaType,
)
from niff_serve.core.metrics import ModelMetrics
from niff_serve.core.protocol_v2 import ModelMetadata, TensorShape, model_metadata
from niff_serve.core.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
# How a model's backend is made: a local runtime (load_backend), or a remote predictor's client.
BackendLoader = Callable[[ModelFolder, Settings, int], Backend]
# Images up to this size are decoded on the event loop (tens of microseconds, less than a thread hand-off).
INLINE_MAX_PIXELS = 128 * 128
# Headers of uploads up to this size are read on the event loop: walking their structure is bounded by
# their size (image_structure), so it stays below a millisecond; larger ones are read on the pool.
INLINE_MAX_HEADER_BYTES = 64 * 1024
# How each reason the contract refuses an image answers over HTTP.
_IMAGE_STATUS: dict[type[ImageError], type[ServiceError]] = {
    EmptyImage: BadRequest,
    CorruptImage: BadRequest,
    UnsupportedImage: UnsupportedMediaType,
    ImageTooLarge: PayloadTooLarge,
    ImageTooCostly: PayloadTooLarge,
    ImageShapeRefused: UnprocessableContent,
}


def batching(folder: ModelFolder, settings: Settings) -> tuple[int, float]:
    """Max batch size and max batch delay for one model: its config.pbtxt's, unless the settings say otherwise."""
    size = settings.max_batch_size or folder.max_batch_size
    delay_s = folder.max_batch_delay_s if settings.max_batch_delay_ms is None else settings.max_batch_delay_ms / 1000
    if settings.max_queue_size < size:
        raise ConfigurationError(
            f"model {folder.name!r}: max_queue_size ({settings.max_queue_size}) is below its max_batch_size ({size})"
        )
    return size, delay_s


class ModelRuntime:
    """A served model: its folder, loaded backend, preprocessing and batcher."""

    def __init__(
        self,
        folder: ModelFolder,
        backend: Backend,
        settings: Settings,
        metrics: ModelMetrics,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.folder = folder
        self.backend = backend
        self.max_batch_size, max_delay_s = batching(folder, settings)
        self.tensor_shape = TensorShape(folder.input_size, folder.num_classes, self.max_batch_size)
        self._limits = settings.image_limits
        self._preprocessor = Preprocessor(folder.manifest.preprocessing, self._limits)
        self.metrics = metrics
        self._pool = pool
        self.batcher = DynamicBatcher(
            backend.run,
            max_batch_size=self.max_batch_size,
            max_delay_s=max_delay_s,
            max_queue_size=settings.max_queue_size,
            metrics=metrics,
            records_batches=backend.kind != "remote",
            instances=backend.parallel_batches or instance_groups(folder.config)[0],
        )
        self.ready = False

    @classmethod
    def load(
        cls,
        folder: ModelFolder,
        settings: Settings,
        metrics: ModelMetrics,
        pool: ThreadPoolExecutor,
        loader: BackendLoader = load_backend,
    ) -> ModelRuntime:
        """Load the backend with ``loader`` and warm it up (blocking: call it off the event loop)."""
        max_batch_size, _ = batching(folder, settings)
        backend = loader(folder, settings, max_batch_size)
        warm_up(backend, folder, max_batch_size)
        return cls(folder, backend, settings, metrics, pool)

    @property
    def name(self) -> str:
        return self.folder.name

    def metadata(self) -> ModelMetadata:
        """The model's KServe v2 metadata, its platform named as Triton names it."""
        return model_metadata(self.name, self.folder.version, self.backend.platform, self.tensor_shape)

    async def infer_images(self, uploads: Sequence[Upload], deadline: Deadline) -> tuple[BatchResult, float]:
        """Logits for encoded images, and the seconds their preprocessing took.

        Every header is read and the request's decoding work checked against its size before any image is
        decoded.
        """
        with self.batcher.admit(len(uploads)) as slot:
            started = time.monotonic()
            images = await self._open(uploads, deadline)
            pixels = sum(image.width * image.height for image in images)
            try:
                self._limits.check_decode_work(
                    pixels, sum(len(upload.data) for upload in uploads), f"the request's {len(uploads)} images declare"
                )
            except ImageTooCostly as exc:
                raise PayloadTooLarge(str(exc)) from None
            inputs, pending = self._decode(uploads, images)
            await _settled(pending, deadline)
            preprocess_s = time.monotonic() - started
            return await slot.infer(inputs, deadline), preprocess_s

    async def infer_tensor(self, inputs: np.ndarray, deadline: Deadline) -> BatchResult:
        """Logits for an already preprocessed ``[N, 3, S, S]`` batch."""
        with self.batcher.admit(len(inputs)) as slot:
            return await slot.infer(inputs, deadline)

    async def _open(self, uploads: Sequence[Upload], deadline: Deadline) -> list[Image.Image]:
        """Every upload's checked header: small uploads on the event loop, larger ones on the pool."""
        loop = asyncio.get_running_loop()
        pending = {
            index: loop.run_in_executor(
                self._pool, self._step, index, upload, "decode", self._preprocessor.open, upload.data
            )
            for index, upload in enumerate(uploads)
            if len(upload.data) > INLINE_MAX_HEADER_BYTES
        }
        try:
            inline = {
                index: self._header(index, upload) for index, upload in enumerate(uploads) if index not in pending
            }
        except BaseException:
            _abandon(pending.values())
            raise
        await _settled(list(pending.values()), deadline)
        return [inline[index] if index in inline else pending[index].result() for index in range(len(uploads))]

    def _header(self, index: int, upload: Upload) -> Image.Image:
        return self._step(index, upload, "decode", self._preprocessor.open, upload.data)

    def _decode(
        self, uploads: Sequence[Upload], images: Sequence[Image.Image]
    ) -> tuple[np.ndarray, list[asyncio.Future[None]]]:
        """The batch of ``uploads``, and the pool's work still writing rows into it.

        A large image goes to the pool first; then the small ones are finished on the event loop, where they
        cost less than the hand-off to a worker thread.
        """
        size = self.folder.input_size
        batch = np.empty((len(uploads), 3, size, size), dtype=np.float32)
        loop = asyncio.get_running_loop()
        small = [image.width * image.height <= INLINE_MAX_PIXELS for image in images]
        pending = [
            loop.run_in_executor(self._pool, self._finish, index, upload, image, batch[index])
            for index, (upload, image) in enumerate(zip(uploads, images, strict=True))
            if not small[index]
        ]
        try:
            for index, (upload, image) in enumerate(zip(uploads, images, strict=True)):
                if small[index]:
                    self._finish(index, upload, image, batch[index])
        except BaseException:
            _abandon(pending)
            raise
        return batch, pending

    def _finish(self, index: int, upload: Upload, image: Image.Image, row: np.ndarray) -> None:
        started = time.perf_counter()
        rgb = self._step(index, upload, "decode", load_image, image)
        pixels = self._step(index, upload, "resize_crop", self._preprocessor.crop, rgb)
        self._step(index, upload, "normalize", self._preprocessor.normalize, pixels, row)
        self.metrics.preprocess_seconds.observe(time.perf_counter() - started)

    def _step(self, index: int, upload: Upload, stage: str, function: Callable[..., T], *args: Any) -> T:
        """One preprocessing step, its CPU time counted under ``stage``, its refusal worded as an HTTP error."""
        started = time.thread_time()
        try:
            return function(*args)
        except ImageError as exc:
            name = f" ({upload.filename!r})" if upload.filename else ""
            raise _IMAGE_STATUS[type(exc)](f"image {index}{name}: {exc}") from None
        finally:
            self.metrics.count_cpu(stage, time.thread_time() - started)


async def _settled(pending: Sequence[asyncio.Future[Any]], deadline: Deadline) -> None:
    """Wait for all of ``pending`` within ``deadline``, then raise the first failure, if any; when the wait
    ends early (the client left, the deadline passed), the work is abandoned (:func:`_abandon`)."""
    if not pending:
        return
    try:
        await deadline.wait(asyncio.wait(pending), "preprocessing")
    except BaseException:
        _abandon(pending)
        raise
    failure = next((future.exception() for future in pending if future.exception() is not None), None)
    if failure is not None:
        raise failure


def _abandon(pending: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel work not yet begun, and retrieve what the rest ends with: an image refused on the pool after
    its request has gone is never logged as an exception nobody retrieved."""
    for future in pending:
        future.cancel()
        future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
