"""Reading request bodies within the size and time limits, and finding the images in them."""

from __future__ import annotations

from collections.abc import AsyncGenerator
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
    UnsupportedMediaType,
)


@dataclass(frozen=True)
class Upload:
    """One encoded image and the name the client gave it (multipart filename), for error messages."""

    data: bytes
    filename: str | None = None


async def read_body(request: Request, limit: int, deadline: Deadline) -> bytes:
    """The whole body, refusing it (413) as soon as it is known to exceed ``limit`` bytes."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    try:
        body = await deadline.wait(_read_limited(request, limit), "upload")
    except DeadlineExceeded:
        raise RequestTimeout("the request body did not arrive before the request deadline") from None
    except ClientDisconnect:
        raise ClientClosedRequest("the client disconnected during the upload") from None
    if not body:
        raise BadRequest("the request body is empty")
    return body


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
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
