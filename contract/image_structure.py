"""An image's container structure walked before Pillow parses it: what parsing it will cost, known first.

Pillow reads PNG chunks, JPEG marker segments and TIFF directory entries one by one in Python, and EXIF
blocks entry by entry: a 32 MB PNG of 2.7 M empty chunks keeps a thread busy for seconds, and a 34-byte
lossless WebP may declare 40 megapixels. Here the structure is walked with a bound on every count, so
that the work Pillow and the decoders do is bounded by the bytes a client sent; what the structure
proves about the pixel data (a JPEG or PNG too short to hold the pixels its header declares) is
checked too, before a pixel is decoded.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from niff_contract.image_errors import CorruptImage, ImageTooCostly

# Chunks (PNG, WebP) a small image may have; larger files may have one more per 2 KiB (encoders write
# pixel data in chunks of 8 to 64 KiB), so that walking them costs far less than reading the bytes.
BASE_PARTS = 1024
BYTES_PER_EXTRA_PART = 2048
# Marker segments before a JPEG's first scan (encoders write fewer than 20) and junk bytes between them.
MAX_JPEG_SEGMENTS = 256
MAX_JPEG_JUNK_BYTES = 1024
# EXIF is parsed entry by entry in Python; JPEG's APP1 segment cannot exceed this, the others may not.
MAX_EXIF_BYTES = 65_536
# TIFF directory entries (images have about 20 to 40).
MAX_TIFF_ENTRIES = 1024
# Deflate cannot compress better than 1032:1; one bit per 8x8 block is the least a JPEG scan can code.
DEFLATE_MAX_RATIO = 1032
JPEG_MIN_BITS_PER_BLOCK = 1

_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})
_JPEG_SOS = 0xDA
_JPEG_EOI = 0xD9


@dataclass(frozen=True)
class Structure:
    """What the walk found of a PNG: its compressed pixel data's size and its bits per pixel."""

    pixel_data_bytes: int = 0
    bits_per_pixel: int = 0


def max_parts(size: int) -> int:
    return BASE_PARTS + size // BYTES_PER_EXTRA_PART


def walk(data: bytes, fmt: str) -> Structure:
    """Walk ``data`` of Pillow format ``fmt``; ImageTooCostly or CorruptImage when parsing it would cost more
    than its size allows, or it cannot be what it claims."""
    if fmt == "PNG":
        return _png(data)
    if fmt in ("JPEG", "MPO"):
        _jpeg(data)
    elif fmt == "WEBP":
        _webp(data)
    elif fmt == "TIFF":
        _tiff(data)
    return Structure()


def check_pixels(fmt: str, width: int, height: int, size: int, structure: Structure) -> None:
    """Refuse an image whose encoded data is too short to hold the pixels its header declares (truncated, or
    crafted to make the decoder invent them): no encoder can compress below these bounds."""
    if fmt in ("JPEG", "MPO"):
        blocks = math.ceil(width / 8) * math.ceil(height / 8)
        if size * 8 < blocks * JPEG_MIN_BITS_PER_BLOCK:
            raise CorruptImage(
                f"the JPEG image is truncated: {size} bytes cannot hold the {width}x{height} pixels it declares"
            )
    elif fmt == "PNG":
        raw = height * (1 + math.ceil(width * structure.bits_per_pixel / 8))
        if structure.pixel_data_bytes * DEFLATE_MAX_RATIO < raw:
            raise CorruptImage(
                f"the PNG image is truncated: {structure.pixel_data_bytes} bytes of pixel data cannot hold the "
                f"{width}x{height} pixels it declares"
            )


def _chunks(data: bytes, fmt: str, start: int, header: str, png: bool) -> Iterator[tuple[bytes, int]]:
    """(type, payload length) of each chunk from ``start``, at most :func:`max_parts` of them.

    PNG chunks are length then type (big-endian) and end with a CRC; RIFF chunks (WebP) are type then length
    (little-endian), their payload padded to an even size.
    """
    most = max_parts(len(data))
    position, chunks = start, 0
    while position + 8 <= len(data):
        chunks += 1
        if chunks > most:
            raise ImageTooCostly(
                f"the {fmt} image has more than {most} chunks; an image of {len(data)} bytes may have {most}"
            )
        first, second = struct.unpack_from(header, data, position)
        kind, length = (second, first) if png else (first, second)
        yield kind, length
        position += (12 + length) if png else (8 + length + (length & 1))


def _exif_limit(fmt: str, length: int) -> None:
    if length > MAX_EXIF_BYTES:
        raise ImageTooCostly(f"the {fmt} image's EXIF block is {length} bytes; the limit is {MAX_EXIF_BYTES}")


def _png(data: bytes) -> Structure:
    bits = data[24] * _PNG_SAMPLES.get(data[25], 4) if len(data) > 25 else 0  # IHDR: bit depth, colour type
    pixel_bytes = 0
    for kind, length in _chunks(data, "PNG", 8, ">I4s", png=True):
        if kind in (b"IDAT", b"fdAT"):
            pixel_bytes += length
        elif kind == b"eXIf":
            _exif_limit("PNG", length)
        elif kind == b"IEND":
            break
    return Structure(pixel_bytes, bits)


def _jpeg(data: bytes) -> None:
    position, segments, junk = 2, 0, 0
    while position < len(data):
        marker_start = data.find(b"\xff", position)
        if marker_start < 0:
            return  # ends before a scan: Pillow refuses it as it would
        junk += marker_start - position
        position = marker_start
        while position < len(data) and data[position] == 0xFF:
            position += 1
            junk += 1
        junk -= 1  # the marker's own 0xFF
        if junk > MAX_JPEG_JUNK_BYTES:
            raise ImageTooCostly(f"the JPEG image has more than {MAX_JPEG_JUNK_BYTES} bytes of padding or junk")
        if position >= len(data):
            return
        marker = data[position]
        position += 1
        if marker in (_JPEG_SOS, _JPEG_EOI):
            return
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageTooCostly(f"the JPEG image has more than {MAX_JPEG_SEGMENTS} marker segments before its data")
        if marker in _JPEG_STANDALONE or marker == 0x00:
            continue
        if position + 2 > len(data):
            return
        position += struct.unpack_from(">H", data, position)[0]


def _webp(data: bytes) -> None:
    for kind, length in _chunks(data, "WebP", 12, "<4sI", png=False):
        if kind == b"EXIF":
            _exif_limit("WebP", length)


def _tiff(data: bytes) -> None:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 16:
        return
    version = struct.unpack_from(order + "H", data, 2)[0]
    if version == 43:  # BigTIFF: 8-byte offsets and counts
        offset = struct.unpack_from(order + "Q", data, 8)[0]
        count_format = order + "Q"
    else:
        offset = struct.unpack_from(order + "I", data, 4)[0]
        count_format = order + "H"
    if offset + struct.calcsize(count_format) > len(data):
        return
    entries = struct.unpack_from(count_format, data, offset)[0]
    if entries > MAX_TIFF_ENTRIES:
        raise ImageTooCostly(f"the TIFF image's directory has {entries} entries; the limit is {MAX_TIFF_ENTRIES}")
