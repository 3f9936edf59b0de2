"""System shared memory for tensors, as KServe v2 / Triton define it over gRPC: a client registers a region
(a POSIX shared memory object ``key``, a window ``offset`` + ``byte_size`` of it) under a ``name``, then an
input or output of ``ModelInfer`` names the region (parameters ``shared_memory_region``,
``shared_memory_offset``, ``shared_memory_byte_size``) instead of carrying bytes in the message.

Only the inference process of the split topology takes it, on a Unix socket its front ends alone can reach
(:mod:`niff_serve.process.inference`): a region maps memory of the registering process, which must be
trusted. The public gRPC endpoint refuses registration.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import threading
from dataclasses import dataclass

import numpy as np

from niff_serve.core.errors import BadRequest, NotFound, ServiceUnavailable

# Where Linux keeps POSIX shared memory objects (shm_open's names).
SHM_DIR = "/dev/shm"
_KEY = re.compile(r"/?[A-Za-z0-9_.-]{1,200}")
MAX_REGIONS = 1024


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    memory: mmap.mmap

    def view(self, offset: int, byte_size: int, what: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` of the region, without a copy; BadRequest when out of bounds."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise BadRequest(
                f"{what}: {byte_size} bytes at offset {offset} do not fit shared memory region {self.name!r} "
                f"of {self.byte_size} bytes"
            )
        start = self.offset + offset
        return memoryview(self.memory)[start : start + byte_size]


class SharedMemoryRegions:
    """The regions registered with one server; registration and lookups come from different threads."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name or not _KEY.fullmatch(key):
            raise BadRequest(f"a region needs a name and a shared memory key of letters, digits, '_.-'; got {key!r}")
        if offset < 0 or byte_size <= 0:
            raise BadRequest(f"region {name!r}: offset {offset} and byte_size {byte_size} must be >= 0 and > 0")
        with self._lock:
            if name in self._regions:
                raise BadRequest(f"shared memory region {name!r} is already registered")
            if len(self._regions) >= MAX_REGIONS:
                raise ServiceUnavailable(f"this server holds {MAX_REGIONS} shared memory regions; unregister some")
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise BadRequest(f"cannot open shared memory key {key!r}: {exc.strerror}") from None
        try:
            if os.fstat(fd).st_size < offset + byte_size:
                raise BadRequest(f"shared memory key {key!r} is smaller than offset + byte_size ({offset + byte_size})")
            memory = mmap.mmap(fd, offset + byte_size)
        finally:
            os.close(fd)
        with self._lock:
            self._regions[name] = Region(name, key, offset, byte_size, memory)

    def unregister(self, name: str) -> None:
        """One region, or every region when ``name`` is empty (Triton's convention)."""
        with self._lock:
            names = list(self._regions) if not name else [name]
            for each in names:
                region = self._regions.pop(each, None)
                if region is None:
                    raise NotFound(f"no shared memory region {each!r} is registered")
                with contextlib.suppress(BufferError):  # a tensor still views it: unmapped when that goes
                    region.memory.close()

    def regions(self, name: str = "") -> list[Region]:
        with self._lock:
            if not name:
                return list(self._regions.values())
            if name not in self._regions:
                raise NotFound(f"no shared memory region {name!r} is registered")
            return [self._regions[name]]

    def view(self, name: str, offset: int, byte_size: int, what: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` of region ``name``, without a copy."""
        [region] = self.regions(name)
        return region.view(offset, byte_size, what)

    def write(self, name: str, offset: int, byte_size: int, array: np.ndarray, what: str) -> None:
        if array.nbytes > byte_size:
            raise BadRequest(f"{what}: {array.nbytes} bytes do not fit the {byte_size} given in region {name!r}")
        np.frombuffer(self.view(name, offset, array.nbytes, what), dtype="<f4")[:] = array.ravel()
