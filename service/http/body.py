"""Reading HTTP request bodies within the size, time and memory limits, and finding the images in them."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from niff_serve.core.body_budget import BodyShare, Upload, parse_length
from niff_serve.core.deadline import Deadline
from niff_serve.core.errors import (
    BadRequest,
    ClientClosedRequest,
    DeadlineExceeded,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)


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
