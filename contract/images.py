"""Untrusted image bytes to a model's input tensor: the one preprocessing of niff-serve and the parity gate.

Decode (only the allowed formats; size and aspect ratio checked from the header before any pixel is
decoded), apply EXIF orientation, convert to RGB, then timm/torchvision's evaluation transform:
``Resize(floor(S / crop_pct), interpolation)`` on the shorter side, ``CenterCrop(S)``, scale to [0, 1],
``Normalize(mean, std)``. What the parity gate checks is therefore exactly what the service feeds.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from niff_contract.image_errors import (
    CorruptImage,
    EmptyImage,
    ImageError,
    ImageShapeRefused,
    ImageTooCostly,
    ImageTooLarge,
    UnsupportedImage,
)
from niff_contract.image_structure import check_pixels, walk
from niff_contract.preprocessing_spec import Preprocessing

__all__ = [
    "CorruptImage",
    "EmptyImage",
    "ImageError",
    "ImageLimits",
    "ImageShapeRefused",
    "ImageTooCostly",
    "ImageTooLarge",
    "Preprocessor",
    "UnsupportedImage",
    "decode_image",
    "load_image",
    "open_image",
]

# Only these decoders ever see the bytes (JPEG's also opens MPO, the variant many cameras write).
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
FORMAT_NAMES = "JPEG, PNG, WebP, BMP or TIFF"
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"II+\x00": "TIFF",
    b"MM\x00+": "TIFF",
}
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be, checked from its header before a pixel is decoded.

    The aspect ratio bounds the resize before the center crop: its shorter side becomes ``resize``, so a
    1×N image would grow to ``resize × resize·N`` pixels. Decoding costs about the same per pixel whatever
    the format, so beyond ``free_pixels`` the pixels must be paid for by bytes: at most
    ``max_pixels_per_byte`` per byte sent (photos have 3 to 30; a 34-byte WebP can declare 40 million).
    """

    max_pixels: int = 40_000_000
    max_aspect_ratio: float = 20.0
    max_pixels_per_byte: float = 128.0
    free_pixels: int = 4_194_304

    def decodable_pixels(self, size: int) -> int:
        """The most pixels this server decodes for ``size`` bytes of images (one image or one request's)."""
        return self.free_pixels + int(size * self.max_pixels_per_byte)

    def check_decode_work(self, pixels: int, size: int, what: str) -> None:
        """ImageTooCostly when ``pixels`` declared in ``size`` bytes exceed :meth:`decodable_pixels`."""
        if pixels > self.decodable_pixels(size):
            raise ImageTooCostly(
                f"{what} {pixels} pixels in {size} bytes; this server decodes at most {self.free_pixels} pixels "
                f"plus {self.max_pixels_per_byte:g} per byte sent"
            )


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """An upright RGB image from encoded bytes."""
    return load_image(open_image(data, limits))


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """The image's header, checked against ``limits``; no pixel is decoded yet (cheap on any input)."""
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    claimed = _sniff(data)
    structure = walk(data, claimed) if claimed is not None else None
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        # Pillow's own guard fires above 2 * MAX_IMAGE_PIXELS, before our check can run.
        limit = min(limits.max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or limits.max_pixels))
        raise ImageTooLarge(f"the image has more than {limit} pixels, more than this server decodes") from None
    except Exception:  # Pillow raises many types for bytes it cannot identify
        if claimed is not None:
            raise CorruptImage(f"the {claimed} image is truncated or corrupt (its header does not parse)") from None
        raise UnsupportedImage(f"the data is not a {FORMAT_NAMES} image") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    if width == 0 or height == 0:
        raise CorruptImage(f"the image is {width}x{height}")
    if structure is None or claimed != _family(image.format):
        raise UnsupportedImage(f"the data is not a {FORMAT_NAMES} image")
    check_pixels(image.format, width, height, len(data), structure)
    limits.check_decode_work(width * height, len(data), f"the image is {width}x{height}:")
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ImageShapeRefused(
            f"the image is {width}x{height}, an aspect ratio of {max(width, height) / min(width, height):.4g}:1; "
            f"the limit is {limits.max_aspect_ratio:g}:1"
        )
    return image


def load_image(image: Image.Image) -> Image.Image:
    """Decode the pixels of an opened image, apply its EXIF orientation, convert to RGB."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except Exception as exc:  # truncated or corrupt data surfaces as OSError, SyntaxError, ValueError, ...
        raise CorruptImage(f"the {image.format} image is truncated or corrupt ({exc})") from None


def _family(fmt: str | None) -> str | None:
    """The format whose magic number Pillow's ``fmt`` has (MPO files are JPEG files)."""
    return "JPEG" if fmt == "MPO" else fmt


def _sniff(data: bytes) -> str | None:
    """The allowed format these bytes claim to be, by their magic number."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "I" or image.mode.startswith("I;16"):
        # 16-bit grayscale: Pillow's own conversion clips at 255 instead of scaling.
        scaled = np.asarray(image, dtype=np.float32) * (255 / 65535)
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return image.convert("RGB")


class Preprocessor:
    """One model's preprocessing, in three steps a server can time apart; thread-safe."""

    def __init__(self, spec: Preprocessing, limits: ImageLimits | None = None) -> None:
        self.input_size = spec.input_size
        self._resize = spec.resize
        self._resample = RESAMPLING[spec.interpolation]
        std = np.asarray(spec.std, dtype=np.float32)
        self._scale = (1 / (255 * std)).astype(np.float32).reshape(3, 1, 1)
        self._offset = (np.asarray(spec.mean, dtype=np.float32) / std).astype(np.float32).reshape(3, 1, 1)
        self._limits = limits or ImageLimits()

    def __call__(self, data: bytes) -> np.ndarray:
        """``[3, S, S]`` float32 for one encoded image."""
        return self.transform(load_image(self.open(data)))

    def transform(self, image: Image.Image) -> np.ndarray:
        """``[3, S, S]`` float32 for a decoded RGB image."""
        return self.normalize(self.crop(image))

    def open(self, data: bytes) -> Image.Image:
        """The checked header (:func:`open_image`); :func:`load_image` decodes it."""
        return open_image(data, self._limits)

    def crop(self, image: Image.Image) -> np.ndarray:
        """Resize the shorter side and center-crop: ``[S, S, 3]`` uint8."""
        width, height = image.size
        if width <= height:
            size = (self._resize, int(self._resize * height / width))
        else:
            size = (int(self._resize * width / height), self._resize)
        if size != image.size:
            image = image.resize(size, self._resample)
        s = self.input_size
        left = round((size[0] - s) / 2)
        top = round((size[1] - s) / 2)
        return np.asarray(image.crop((left, top, left + s, top + s)))

    def normalize(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Scale to [0, 1] and normalize ``[S, S, 3]`` uint8 into ``[3, S, S]`` float32 (``out`` when given).

        One multiply from the channel-first view of the pixels straight into the output, then one
        in-place subtraction: no intermediate float image, no transpose copy.
        """
        if out is None:
            out = np.empty((3, self.input_size, self.input_size), dtype=np.float32)
        np.multiply(pixels.transpose(2, 0, 1), self._scale, out=out)
        out -= self._offset
        return out
