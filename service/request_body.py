"""Reading request bodies within the size, time and memory limits, and finding the images in them."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from niff_serve.deadline import Deadline
from niff_serve.errors import (
    BadRequest,
    ClientClosedRequest,
    DeadlineExceeded,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from niff_serve.memory import trim_after

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


async def read_body(request: Request, limit: int, deadline: Deadline, share: BodyShare) -> bytes:
    """The whole body, refusing it (413) as soon as it is known to exceed ``limit`` bytes.

    Its bytes are claimed from ``share`` before they are read (503 when the server holds too much).
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    declared = parse_length(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    if declared is not None:
        share.claim(declared)
    try:
        body = await deadline.wait(_read_limited(request, limit, None if declared is not None else share), "upload")
    except DeadlineExceeded:
        raise RequestTimeout("the request body did not arrive before the request deadline") from None
    except ClientDisconnect:
        raise ClientClosedRequest("the client disconnected during the upload") from None
    if not body:
        raise BadRequest("the request body is empty")
    return body


async def _read_limited(request: Request, limit: int, share: BodyShare | None) -> bytes:
    """The body's chunks, claimed one by one from ``share`` when its length was not declared."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        if share is not None:
            share.claim(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def image_uploads(request: Request, body: bytes, max_files: int) -> list[Upload]:
    """Every file part of a multipart form, or the whole body as one image."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return [Upload(body)]
    parser = MultiPartParser(request.headers, _once(body), max_files=max_files, max_fields=64)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed multipart body: {exc.message}") from None
    try:
        uploads = [
            Upload(await value.read(), value.filename)
            for _, value in form.multi_items()
            if isinstance(value, UploadFile)
        ]
    finally:
        await form.close()
    if not uploads:
        raise BadRequest("the multipart form has no file parts; send images as files")
    return uploads


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body
