"""ONNX artifacts in OpenVINO: every form niff-export writes loads there and matches eager PyTorch, the gate
runs it there and fails the export when it differs, niff.json records where each file was checked, and
``--target`` picks the compact export's circular padding (one wrap Pad for ONNX Runtime, Slices and Concats
that OpenVINO reads)."""

from __future__ import annotations

import json
from importlib import metadata

import onnx
import pytest
import torch
from model_helpers import OnePercentOff, zoo_model
from reference_vectors import relative_error

import niff
import niff_export.api
from niff import digits
from niff_contract import ArtifactRecord
from niff_export import ExportError, bake, export_model, lower
from niff_export import runtimes as runtimes_module
from niff_export.artifacts import write_onnx
from niff_export.cli import main
from niff_export.compact import CompactRequest
from niff_export.lowering import MATMUL_LOWERINGS, PER_IMAGE_LOWERINGS, spectral_layers

ov = pytest.importorskip("openvino")

SMALL = 32
ORT = f"onnxruntime {metadata.version('onnxruntime')}"
OPENVINO = f"openvino {metadata.version('openvino')}"


def _in_openvino(path, x: torch.Tensor) -> torch.Tensor:
    """The file run as a user would, at float32 precision (OpenVINO's default on bfloat16 CPUs is bfloat16)."""
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return torch.from_numpy(compiled(x.numpy())[0].copy())


def _batch(n: int, size: int = SMALL) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))


def _ops(path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("name", ["resnet18_full", "mobilenet_v2"])
def test_exact_export_runs_in_openvino_and_the_gate_checked_it_there(name, tmp_path):
    model = zoo_model(name, SMALL)
    result = export_model(model, SMALL, tmp_path, formats=["onnx"])
    assert {(r.candidate, r.inputs) for r in result.parity.rows if "openvino" in r.candidate} == {
        ("onnx (fp32) openvino", "random"),
        ("onnx (fp32) openvino", "photos"),
    }
    assert result.manifest.artifacts["onnx"].verified_runtimes == (ORT, OPENVINO)
    for batch in (1, 5):
        x = _batch(batch)
        with torch.no_grad():
            assert relative_error(_in_openvino(result.path / "1" / "model.onnx", x), model(x)) <= 1e-4


@pytest.mark.parametrize(
    "name, choice",
    [
        *(("resnet18_full", lowering) for lowering in (*MATMUL_LOWERINGS, *PER_IMAGE_LOWERINGS)),
        ("mobilenet_v2", "separable"),
    ],
)
def test_every_layer_lowering_runs_in_openvino(name, choice, tmp_path):
    """Each per-layer lowering (what --tune may pick) on full layers with folded biases; separable, whose bias
    needed a form OpenVINO compiles, on depthwise ones too."""
    model = zoo_model(name, 48)
    baked = bake(model, 48)
    lowered = lower(baked, "matmul", {layer: choice for layer, _ in spectral_layers(baked)})
    path = tmp_path / "model.onnx"
    write_onnx(lowered, torch.randn(2, 3, 48, 48), path, "matmul", None)
    x = _batch(3, 48)
    with torch.no_grad():
        assert relative_error(_in_openvino(path, x), model(x)) <= 1e-4


def test_fp16_artifact_runs_in_openvino(tmp_path):
    model = zoo_model("resnet18_split", SMALL)
    result = export_model(model, SMALL, tmp_path, formats=["onnx"], fp16=True)
    assert [r.candidate for r in result.parity.rows if "openvino" in r.candidate] == ["onnx (fp16) openvino"] * 2
    x = _batch(4)
    with torch.no_grad():
        reference = model(x)
    out = _in_openvino(result.path / "1" / "model.onnx", x)
    assert out.dtype == torch.float32 and relative_error(out, reference) <= 1e-2
    assert torch.equal(out.argmax(1), reference.argmax(1))


@pytest.fixture(scope="module")
def digits_model():
    return niff.load_checkpoint(str(digits.DEFAULT_CHECKPOINT))


def _compact(model, folder, target=None):
    request = CompactRequest(kernel=9, min_agreement=0.0)
    return export_model(model, SMALL, folder, "digits9", formats=["onnx"], compact=request, target=target)


def test_portable_compact_export_pads_with_slices_and_runs_in_openvino(digits_model, tmp_path):
    result = _compact(digits_model, tmp_path)
    path = result.path / "1" / "model.onnx"
    nodes = _ops(path)
    assert not [n for n in nodes if n.op_type == "Pad"] and [n for n in nodes if n.op_type == "Slice"]
    assert result.manifest.artifacts["onnx"].target == "portable"
    assert result.manifest.artifacts["onnx"].opset == 18  # no wrap Pad, no opset 19 needed
    assert "onnx (fp32) openvino vs compact" in {r.candidate for r in result.parity.rows}
    compact = niff_export.compact.compact_model(bake(digits_model, SMALL), result.compact)
    x = _batch(5)
    with torch.no_grad():
        assert relative_error(_in_openvino(path, x), compact(x)) <= 1e-4


def test_onnxruntime_target_keeps_the_wrap_pad_that_openvino_refuses(digits_model, tmp_path):
    result = _compact(digits_model, tmp_path, target="onnxruntime")
    path = result.path / "1" / "model.onnx"
    pads = [n for n in _ops(path) if n.op_type == "Pad"]
    assert len(pads) == 3 and all(a.s == b"wrap" for n in pads for a in n.attribute if a.name == "mode")
    record = result.manifest.artifacts["onnx"]
    assert (record.target, record.verified_runtimes, record.opset) == ("onnxruntime", (ORT,), 19)
    assert not [r for r in result.parity.rows if "openvino" in r.candidate]
    with pytest.raises(RuntimeError, match="wrap"):
        ov.Core().read_model(str(path))


def test_niff_json_records_the_target_and_the_checked_runtimes(digits_model, tmp_path):
    result = export_model(digits_model, SMALL, tmp_path, "digits")
    meta = json.loads((result.path / "niff.json").read_text())
    onnx_record, script_record = meta["artifacts"]["onnx"], meta["artifacts"]["torchscript"]
    assert onnx_record["target"] == "portable" and onnx_record["verified_runtimes"] == [ORT, OPENVINO]
    assert script_record["target"] is None
    assert script_record["verified_runtimes"] == [f"torch {metadata.version('torch')}"]
    assert meta["versions"]["openvino"] == metadata.version("openvino")
    # Folders of earlier exporters have neither field.
    older = {k: v for k, v in onnx_record.items() if k not in ("target", "verified_runtimes")}
    assert ArtifactRecord.model_validate(older).verified_runtimes == ()


def test_a_wrong_openvino_result_fails_the_export_and_writes_nothing(digits_model, tmp_path, monkeypatch):
    honest = runtimes_module._openvino
    monkeypatch.setattr(runtimes_module, "_openvino", lambda path: OnePercentOff(honest(path)))
    with pytest.raises(ExportError) as failure:
        export_model(digits_model, SMALL, tmp_path, "digits", formats=["onnx"])
    message = str(failure.value)
    assert "parity check failed; nothing was written" in message
    failing = [line for line in message.splitlines() if line.endswith("FAIL")]
    assert failing and all(line.startswith("onnx (fp32) openvino ") for line in failing)
    assert not list(tmp_path.iterdir())


def test_a_file_openvino_cannot_load_fails_the_export_clearly(digits_model, tmp_path, monkeypatch):
    monkeypatch.setattr(niff_export.api, "wrap_padding", lambda target: True)  # a wrap Pad in a portable file
    with pytest.raises(ExportError, match=r"OpenVINO cannot load model\.onnx; nothing was written\..*wrap"):
        _compact(digits_model, tmp_path)
    assert not list(tmp_path.iterdir())


def _error(capsys) -> str:
    return next(line for line in capsys.readouterr().err.splitlines() if line.startswith("niff-export: error:"))


def test_target_choices_that_cannot_be_met_are_one_clear_error(tmp_path, capsys, monkeypatch):
    base = [str(digits.DEFAULT_CHECKPOINT), "--size", "32", "--out", str(tmp_path), "--format", "onnx"]
    assert main([*base, "--fft", "dft", "--target", "portable"]) != 0
    assert "--fft dft writes ONNX DFT ops, which OpenVINO cannot read" in _error(capsys)
    monkeypatch.setattr(runtimes_module, "openvino_installed", lambda: False)
    assert main([*base, "--target", "openvino"]) != 0
    assert "OpenVINO, which is not installed: pip install 'niff-deploy[openvino]'" in _error(capsys)
    assert not list(tmp_path.iterdir())


def test_without_openvino_the_summary_says_what_was_not_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runtimes_module, "openvino_installed", lambda: False)
    assert main([str(digits.DEFAULT_CHECKPOINT), "--size", "32", "--out", str(tmp_path), "--name", "digits"]) == 0
    out = capsys.readouterr().out
    assert f"checked in {ORT}\n" in out and "not checked in OpenVINO, which is not installed" in out
    meta = json.loads((tmp_path / "digits" / "niff.json").read_text())
    assert meta["artifacts"]["onnx"]["verified_runtimes"] == [ORT]


def test_dft_lowering_defaults_to_onnxruntime_alone(tmp_path):
    result = export_model(zoo_model("resnet18_split", SMALL), SMALL, tmp_path, formats=["onnx"], fft="dft")
    record = result.manifest.artifacts["onnx"]
    assert (record.lowering, record.target, record.verified_runtimes) == ("dft", "onnxruntime", (ORT,))
