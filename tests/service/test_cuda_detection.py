"""Device choice: the CUDA provider in onnxruntime's list describes the build, not the host."""

from __future__ import annotations

import ctypes

import pytest

from niff_serve.backends import onnxruntime as ort_backend


def test_no_driver_means_no_gpu(monkeypatch):
    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    monkeypatch.setattr(
        ort_backend.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert ort_backend.cuda_device_count() == 0
    assert ort_backend.cuda_available() is False


@pytest.mark.parametrize("count, expected", [(0, False), (2, True)])
def test_driver_device_count_decides(monkeypatch, count, expected):
    class FakeDriver:
        def cuInit(self, flags):
            return 0

        def cuDeviceGetCount(self, pointer):
            pointer._obj.value = count
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeDriver())
    monkeypatch.setattr(
        ort_backend.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert ort_backend.cuda_available() is expected


def test_cpu_build_never_claims_cuda(monkeypatch):
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert ort_backend.cuda_available() is False
