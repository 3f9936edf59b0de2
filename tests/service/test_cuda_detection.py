"""Device choice: the CUDA provider in onnxruntime's list describes the build, not the host."""

from __future__ import annotations

import ctypes

import pytest

from niff_serve.core.backends import onnxruntime as ort_backend
from niff_serve.core.errors import ConfigurationError

pytestmark = pytest.mark.fast


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


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_cuda_sessions_load_the_nvidia_wheels_first(monkeypatch, tmp_path, device):
    """The GPU images hold CUDA only as PyPI's NVIDIA wheels: onnxruntime must be pointed at them before a
    CUDA session starts (here a CPU build, which then refuses the CUDA provider)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    calls = []
    monkeypatch.setattr(ort_backend.ort, "preload_dlls", lambda **kwargs: calls.append(kwargs), raising=False)
    if device == "cuda":
        with pytest.raises(ConfigurationError, match="CUDA execution provider"):
            ort_backend.OnnxRuntimeBackend(path, device, "input", "logits", threads=1)
        assert calls == [{"cuda": True, "cudnn": True, "msvc": False}]
    else:
        ort_backend.OnnxRuntimeBackend(path, device, "input", "logits", threads=1)
        assert calls == []
