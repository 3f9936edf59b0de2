"""Small hostile images, each costing a naive server seconds: made here, so tests and benchmarks send the same.

- a lossless WebP of 38 bytes that declares 6000x6600 pixels (one colour: no bits per pixel),
- a JPEG of 8x8 pixels of data whose header declares 6000x6600 (libjpeg fills in the rest),
- a PNG with a flood of empty ancillary chunks before its pixel data,
- a JPEG with a flood of empty comment segments before its scan.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

BOMB_SIZE = (6000, 6600)


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def webp_bomb(size: tuple[int, int] = BOMB_SIZE) -> bytes:
    """A 16x16 one-colour lossless WebP with its VP8L header rewritten to ``size``."""
    data = _encoded(Image.new("RGB", (16, 16), (200, 10, 10)), "WEBP", lossless=True, exact=True)
    header = data.index(b"VP8L") + 8
    bits = int.from_bytes(data[header + 1 : header + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | (size[0] - 1) | ((size[1] - 1) << 14)
    return data[: header + 1] + bits.to_bytes(4, "little") + data[header + 5 :]


def truncated_jpeg(size: tuple[int, int] = BOMB_SIZE) -> bytes:
    """An 8x8 JPEG whose frame header says ``size``: a complete file with almost none of its pixels."""
    data = _encoded(Image.new("RGB", (8, 8), (90, 120, 200)), "JPEG", quality=75)
    frame = data.index(b"\xff\xc0") + 5  # SOF0: length (2), precision (1), then height and width
    return data[:frame] + struct.pack(">HH", size[1], size[0]) + data[frame + 4 :]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def chunk_flood_png(chunks: int) -> bytes:
    """A valid 64x64 PNG with ``chunks`` empty private ancillary chunks between its header and its pixels."""
    data = _encoded(Image.new("RGB", (64, 64), (30, 160, 90)), "PNG")
    pixels = data.index(b"IDAT") - 4
    return data[:pixels] + _chunk(b"niFf", b"") * chunks + data[pixels:]


def comment_flood_jpeg(segments: int) -> bytes:
    """A valid 64x64 JPEG with ``segments`` empty comment segments right after its start marker."""
    data = _encoded(Image.new("RGB", (64, 64), (30, 160, 90)), "JPEG", quality=90)
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]
