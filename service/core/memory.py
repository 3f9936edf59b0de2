"""Memory a request frees goes back to the operating system.

glibc's malloc serves a large block from ``mmap`` (returned on ``free``) only above a threshold that it
raises each time such a block is freed, up to 32 MiB; after one large image the next ones come from the
heap's arenas, one per decoding thread, which keep what they held. Four 40-megapixel JPEGs decoded at once
left 1.3 GB resident for good; with the threshold fixed at 1 MiB the same work leaves 85 MB. What a large
request body leaves in the heaps in smaller pieces (gRPC's buffers, parsed messages) is trimmed once it
has been answered: a refused 7.5 MB gRPC message left 8-16 MB behind, 2 MB after the trim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20
# Bodies from this size on are followed by a trim of the heaps (which costs about a millisecond).
TRIM_AFTER_BYTES = 4 << 20


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name) if name is not None else None
        return (
            library if library is not None and hasattr(library, "mallopt") and hasattr(library, "malloc_trim") else None
        )
    except OSError:
        return None


_LIBC = _glibc()  # None where the C library is not glibc (musl): its allocator returns memory by itself


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold; whether it was set."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim_after(size: int) -> None:
    """Give the heaps' free pages back to the operating system after a body of ``size`` bytes, if large."""
    if _LIBC is not None and size >= TRIM_AFTER_BYTES:
        _LIBC.malloc_trim(0)
