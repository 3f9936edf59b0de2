"""Every zoo architecture exported end to end, artifacts checked in ONNX Runtime and in fresh TorchScript."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from model_helpers import OnePercentOff, zoo_model
from reference_vectors import relative_error, vectors

import niff
from niff_contract import parse_config, sha256_file
from niff_export import FORMATS, bake, export_checkpoint, export_model, lower, lowering_for
from niff_export.artifacts import write_onnx
from niff_export.lowering import MATMUL_LOWERINGS, PER_IMAGE_LOWERINGS, default_layer_lowering, spectral_layers
from niff_export.tuning import candidates

SMALL = 32


def _onnx(path):
    return ort.InferenceSession(str(path / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return tmp_path_factory.mktemp("repository")


@pytest.mark.parametrize("name", niff.list_models())
def test_zoo_architecture_exports_with_parity(name, repository):
    model = zoo_model(name, SMALL)
    result = export_model(model, SMALL, repository)
    assert result.parity.passed
    session = _onnx(result.path)
    scripted = torch.jit.load(str(result.path / "1" / "model.pt"))
    for batch in (1, 3, 8):
        x = torch.randn(batch, 3, SMALL, SMALL, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            reference = model(x)
            assert relative_error(scripted(x), reference) <= 1e-4
        out = session.run(["logits"], {"input": x.numpy()})[0]
        assert out.shape == (batch, 10)
        assert relative_error(torch.from_numpy(out), reference) <= 1e-4


@pytest.mark.parametrize("name", ["resnet50_split", "convnext_tiny"])
def test_full_size_export(name, tmp_path):
    model = zoo_model(name, 224, num_classes=1000)
    result = export_model(model, 224, tmp_path)
    assert result.parity.passed and {r.inputs for r in result.parity.rows} == {"random", "photos"}
    meta = json.loads((result.path / "niff.json").read_text())
    assert meta["input"]["shape"] == [3, 224, 224] and meta["preprocessing"]["resize"] == 256
    labels = (result.path / "labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = model(x)
    out = _onnx(result.path).run(None, {"input": x.numpy()})[0]
    assert relative_error(torch.from_numpy(out), reference) <= 1e-4
    assert np.array_equal(out.argmax(1), reference.argmax(1).numpy())


@pytest.mark.parametrize("golden", [g for g in vectors() if not g.is_layer], ids=lambda g: g.file)
def test_reference_models_exported_match_reference_outputs(golden, tmp_path):
    data = golden.load()
    checkpoint = tmp_path / golden.file
    torch.save({"model": data["state_dict"]}, checkpoint)
    result = export_checkpoint(checkpoint, 32, tmp_path / "repo")
    onnx_out = torch.from_numpy(_onnx(result.path).run(None, {"input": data["input"].numpy()})[0])
    script_out = torch.jit.load(str(result.path / "1" / "model.pt"))(data["input"])
    for out in (onnx_out, script_out):
        assert relative_error(out, data["output"]) <= 1e-4
        assert torch.equal(out.argmax(1), data["output"].argmax(1))
    assert result.manifest.checkpoint.sha256 == sha256_file(checkpoint)


@pytest.fixture(scope="module")
def small_model():
    return zoo_model("resnet18_split", SMALL)


def test_every_lowering(small_model, tmp_path):
    # --fft torch and --fft dft name the same artifacts (ONNX DFT ops, torch.fft in TorchScript): one export.
    assert {fmt: lowering_for(fmt, "torch") for fmt in FORMATS} == {fmt: lowering_for(fmt, "dft") for fmt in FORMATS}
    ops = {}
    for fft in ("matmul", "dft"):
        result = export_model(small_model, SMALL, tmp_path / fft, fft=fft)
        assert result.parity.passed
        graph = onnx.load(str(result.path / "1" / "model.onnx")).graph
        ops[fft] = {node.op_type for node in graph.node}
        script_graph = str(torch.jit.load(str(result.path / "1" / "model.pt")).inlined_graph)
        artifacts = result.manifest.artifacts
        if fft == "matmul":
            assert artifacts["onnx"].lowering == artifacts["torchscript"].lowering == "matmul"
            assert "fft_" not in script_graph
        else:
            assert (artifacts["onnx"].lowering, artifacts["torchscript"].lowering) == ("dft", "torch")
            assert "aten::fft_rfft2" in script_graph
    assert "DFT" in ops["dft"] and "DFT" not in ops["matmul"] and "MatMul" in ops["matmul"]


@pytest.mark.parametrize("choice", [*MATMUL_LOWERINGS, *PER_IMAGE_LOWERINGS])
@pytest.mark.parametrize("name", ["resnet18_full", "mobilenet_v2"])
def test_every_layer_lowering_on_whole_models(name, choice, tmp_path):
    """Each per-layer lowering, forced on every spectral layer (depthwise or full), exported and run in ONNX Runtime."""
    model = zoo_model(name, 48)
    baked = bake(model, 48)
    lowered = lower(baked, "matmul", {layer: choice for layer, _ in spectral_layers(baked)})
    path = tmp_path / "model.onnx"
    write_onnx(lowered, torch.randn(2, 3, 48, 48), path, "matmul", None)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
    assert relative_error(torch.from_numpy(session.run(None, {"input": x.numpy()})[0]), reference) <= 1e-4


def test_tune_times_every_candidate_and_keeps_the_fastest(small_model, tmp_path):
    result = export_model(small_model, SMALL, tmp_path, tune=True, max_batch_size=4)
    assert result.parity.passed
    meta = json.loads((result.path / "niff.json").read_text())
    names = [name for name, _ in spectral_layers(bake(small_model, SMALL))]
    for fmt, info in meta["artifacts"].items():
        assert info["tuning"]["batch"] == 4
        layers = info["spectral_layers"]
        assert [layer["layer"] for layer in layers] == names
        for layer in layers:
            timings = layer["timings_ms"]
            expected = candidates(fmt, lowering_for(fmt, None), layer["map_size"])
            assert set(timings) == set(expected) and all(t > 0 for t in timings.values())
            assert layer["lowering"] == min(timings, key=timings.get)
    script_graph = str(torch.jit.load(str(result.path / "1" / "model.pt")).inlined_graph)
    torchscript_layers = meta["artifacts"]["torchscript"]["spectral_layers"]
    assert ("aten::fft_rfft2" in script_graph) == any(layer["lowering"] == "fft" for layer in torchscript_layers)


def test_fp16_artifacts_keep_float32_interface(small_model, tmp_path):
    result = export_model(small_model, SMALL, tmp_path, fp16=True)
    assert result.parity.passed and result.parity.tolerance == 1e-2
    assert all(record.fp16 for record in result.manifest.artifacts.values())
    model = onnx.load(str(result.path / "1" / "model.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


@pytest.mark.parametrize("fft", ["torch", "matmul"])
def test_torchscript_runs_without_our_packages(small_model, tmp_path, fft):
    result = export_model(small_model, SMALL, tmp_path, formats=["torchscript"], fft=fft)
    x = torch.randn(4, 3, SMALL, SMALL)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(small_model(x), tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("niff", "niff_export", "niff_serve"):
            sys.modules[name] = None  # any import of our packages now fails
        import torch
        model = torch.jit.load({str(result.path / "1" / "model.pt")!r})
        out = model(torch.load({str(tmp_path / "x.pt")!r}))
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        err = float((out - expected).norm() / expected.norm())
        assert err <= 1e-4, err
        print("ok", tuple(out.shape))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok (4, 10)"
    assert not (result.path / "1" / "model.onnx").exists()


def test_repository_files_describe_the_model(small_model, tmp_path):
    result = export_model(small_model, SMALL, tmp_path, name="tiny", labels=[f"c{i}" for i in range(10)])
    meta = json.loads((result.path / "niff.json").read_text())
    assert meta["name"] == "tiny" and meta["arch"] == "resnet18_split" and meta["num_classes"] == 10
    assert meta["arch_kwargs"]["block"] == "BasicBlock" and meta["arch_kwargs"]["layers"] == [2, 2, 2, 2]
    assert meta["parity"]["passed"] and meta["parity"]["rows"]
    for info in meta["artifacts"].values():
        assert info["sha256"] == sha256_file(result.path / info["path"])
        assert info["tuning"] is None
    layers = meta["artifacts"]["onnx"]["spectral_layers"]
    baked_layers = dict(spectral_layers(bake(small_model, SMALL)))
    assert len(layers) == len(baked_layers) > 0
    for layer in layers:
        assert layer["kind"] == "depthwise" and layer["timings_ms"] == {}
    assert [layer["lowering"] for layer in layers] == [
        default_layer_lowering(baked_layers[layer["layer"]], "matmul") for layer in layers
    ]
    assert {layer["lowering"] for layer in meta["artifacts"]["torchscript"]["spectral_layers"]} == {"fft"}
    assert {"torch", "onnx", "onnxruntime", "niff"} <= meta["versions"].keys()
    assert (result.path / "labels.txt").read_text().splitlines() == [f"c{i}" for i in range(10)]
    config = parse_config((result.path / "config.pbtxt").read_text())
    assert config.name == "tiny" and list(config.input[0].dims) == [3, 32, 32] and list(config.output[0].dims) == [10]
    assert list(config.version_policy.specific.versions) == [1] and meta["version"] == 1
    assert {info["path"].split("/")[0] for info in meta["artifacts"].values()} == {"1"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parity_gate_refuses_a_wrong_artifact(small_model, tmp_path, monkeypatch):
    import niff_export.api
    from niff_export import ExportError

    earlier = export_model(small_model, SMALL, tmp_path, name="drifted", formats=["onnx"])
    before = (earlier.path / "niff.json").read_text()
    monkeypatch.setattr(niff_export.api, "in_precision", lambda model, fp16: OnePercentOff(model))
    with pytest.raises(ExportError) as failure:
        export_model(small_model, SMALL, tmp_path, name="drifted", force=True)
    message = str(failure.value)
    assert "parity check failed; nothing was written" in message
    assert "onnx (fp32)" in message and "FAIL" in message and "baked (torch)" in message
    assert [p.name for p in tmp_path.iterdir()] == ["drifted"]
    assert (earlier.path / "niff.json").read_text() == before
    assert not (earlier.path / "1" / "model.pt").exists()
