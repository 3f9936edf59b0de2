"""Why bytes do not become an input tensor: one class per reason, so that a server maps each to a status."""

from __future__ import annotations


class ImageError(ValueError):
    """Bytes that do not become an input tensor; the subclass says why (a server maps it to a status)."""


class EmptyImage(ImageError):
    pass


class CorruptImage(ImageError):
    pass


class UnsupportedImage(ImageError):
    pass


class ImageTooLarge(ImageError):
    pass


class ImageShapeRefused(ImageError):
    """Decodable, but of an aspect ratio whose resize before the crop would be unbounded."""


class ImageTooCostly(ImageError):
    """Decodable, but parsing or decoding it would cost more than its size in bytes pays for."""
