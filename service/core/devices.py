"""The GPUs this host has, asked of the NVIDIA driver itself (no runtime needed)."""

from __future__ import annotations

import ctypes


def cuda_device_count() -> int:
    """GPUs the NVIDIA driver reports; 0 on a host without the driver or without a GPU."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value
