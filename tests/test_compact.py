"""Compact export: circular KxK layers equal an independent truncation, the per-layer choice follows the
report's numbers, the gate and niff.json say what was approximated, and every user mistake is one clear line
with nothing written (the CLI is run in-process via ``main``)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from kernel_reference import impulse_kernels, window_mask
from model_helpers import realistic
from PIL import Image
from torch import nn

import niff
import niff_export
from niff import digits
from niff.layers import FreqConvDW, FreqConvFull
from niff_contract import CompactLayer
from niff_export import bake
from niff_export.cli import main
from niff_export.compact import (
    MIN_COMPACT_MAP,
    CircularConv,
    CompactPlan,
    CompactRequest,
    choose,
    compact_model,
    plan_compaction,
)
from niff_export.errors import ExportError
from niff_export.kernels import find_filter_layers, measure
from niff_export.report import analyse_model
from niff_export.runtimes import openvino_installed

CHECKPOINT = str(digits.DEFAULT_CHECKPOINT)


def _truncated_reference(layer: nn.Module, bn: nn.BatchNorm2d, x: torch.Tensor, kernel: int) -> np.ndarray:
    """BatchNorm(circular convolution with the layer's impulse responses cut to the window), in NumPy via FFTs."""
    n = x.shape[-1]
    kernels = impulse_kernels(layer, n) * window_mask(n, kernel)
    spectrum_in = np.fft.fft2(x.double().numpy())
    if isinstance(layer, FreqConvDW):
        y = np.fft.ifft2(spectrum_in * np.fft.fft2(kernels)[None]).real
    else:
        mix = np.fft.fft2(kernels).reshape(layer.in_planes, layer.out_planes, n, n)
        y = np.fft.ifft2(np.einsum("bihw,iohw->bohw", spectrum_in, mix)).real
    weight, bias = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    scale = weight / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    shift = bias - bn.running_mean.double().numpy() * scale
    return y * scale[None, :, None, None] + shift[None, :, None, None]


@pytest.mark.parametrize("n, kernel", [(14, 5), (9, 7), (16, 3)])
@pytest.mark.parametrize("kind", ["depthwise", "full"])
def test_compact_layer_is_the_truncated_circular_convolution_with_batchnorm_folded(kind, n, kernel):
    torch.manual_seed(n + kernel)
    layer = FreqConvDW(6) if kind == "depthwise" else FreqConvFull(4, 5)
    channels_out = 6 if kind == "depthwise" else 5
    model = nn.Sequential(layer, nn.BatchNorm2d(channels_out))
    bn = model[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.3, 0.3)
        bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(3, layer.planes if kind == "depthwise" else 4, n, n)
    baked = bake(model, n, x)
    choice = CompactLayer(
        layer="0", kind=kind, map_size=n, kernel=kernel, mass_kept=0.0, energy_kept=0.0, spectral_error=0.0
    )
    compacted = compact_model(baked, CompactPlan(CompactRequest(kernel=kernel), n, (choice,)))
    assert isinstance(compacted.get_submodule("0"), CircularConv) and not hasattr(compacted, "1")
    with torch.no_grad():
        ours = compacted(x).double().numpy()
    expected = _truncated_reference(layer, bn, x, kernel)
    assert np.linalg.norm(ours - expected) / np.linalg.norm(expected) <= 1e-5
    # TorchScript takes torch's circular padding, eager the ONNX-friendly wrap: the same numbers.
    scripted = torch.jit.script(compacted)
    assert torch.allclose(scripted(x), compacted(x), atol=1e-6)


def _stats(layer: str, n: int, channels: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    module = FreqConvDW(channels)
    (found,) = find_filter_layers(module, n, torch.randn(1, channels, n, n))
    return measure(found.__class__(layer, module, n))


def test_choice_rules():
    big, small = _stats("big", 32), _stats("small", MIN_COMPACT_MAP - 1)
    assert choose(big, CompactRequest(kernel=9)).kernel == 9
    kept = choose(small, CompactRequest(kernel=3))
    assert kept.kernel is None and "7x7 map: below 8x8" in kept.reason and kept.mass_kept == 1.0
    whole = choose(_stats("eight", 8), CompactRequest(kernel=9))
    assert whole.kernel is None and whole.reason == "a 9x9 window holds the whole 8x8 kernel"
    by_mass = choose(big, CompactRequest(mass=0.6))
    assert by_mass.kernel == big.effective_kernel(0.6) and by_mass.mass_kept >= 0.6 - 1e-12
    assert choose(big, CompactRequest(mass=0.6, kernel=3)).kernel == min(3, by_mass.kernel)
    error = big.spectral_error[3]
    by_error = choose(big, CompactRequest(error=error))
    assert by_error.kernel <= 7 and by_error.spectral_error <= error
    assert choose(big, CompactRequest(mass=1.0)).reason == "1 of the L1 mass needs the whole 32x32 kernel"


@pytest.mark.parametrize(
    "request_args, message",
    [
        ({}, "needs --compact MASS, --compact-error E or --compact-kernel K"),
        ({"mass": 0.0}, "in (0, 1]; got 0"),
        ({"mass": 1.5}, "in (0, 1]; got 1.5"),
        ({"mass": float("nan")}, "in (0, 1]; got nan"),
        ({"error": 0.0}, "must be positive; got 0"),
        ({"mass": 0.9, "error": 0.1}, "not both"),
        ({"kernel": 4}, "must be an odd positive side"),
        ({"kernel": 0}, "must be an odd positive side"),
        ({"kernel": 5, "min_agreement": 1.2}, "a share in [0, 1]"),
        ({"kernel": 5, "max_accuracy_drop": -0.1}, "--compact-max-accuracy-drop is a share in [0, 1]"),
        ({"kernel": 5, "max_accuracy_drop": float("nan")}, "--compact-max-accuracy-drop is a share in [0, 1]"),
        ({"kernel": 5, "max_accuracy_drop": 0.01}, "give them with --calibration DIR"),
    ],
)
def test_request_validation(request_args, message):
    with pytest.raises(ExportError) as error:
        CompactRequest(**request_args)
    assert message in str(error.value)


def test_plans_follow_the_report():
    model = niff.load_checkpoint(CHECKPOINT)
    report = analyse_model(model, 32)
    by_mass = plan_compaction(model, 32, CompactRequest(mass=0.9))
    expected = [s.effective_kernel(0.9) for s in report.layers]
    assert [c.kernel for c in by_mass.layers] == [
        k if k < s.map_size and s.map_size >= 8 else None for k, s in zip(expected, report.layers, strict=True)
    ]
    capped = plan_compaction(model, 32, CompactRequest(mass=0.9, kernel=7))
    assert [c.kernel for c in capped.layers] == [7, 7, 7, 7, None]
    by_error = plan_compaction(model, 32, CompactRequest(error=0.3))
    for choice, stats in zip(by_error.layers, report.layers, strict=True):
        if choice.kernel is not None:
            assert (
                stats.spectral_error[stats.index(choice.kernel)]
                <= 0.3
                < stats.spectral_error[stats.index(choice.kernel) - 1]
            )


# --- the CLI, in-process -------------------------------------------------------------------------


def _one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("niff-export: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.fixture(scope="module")
def compact_digits(tmp_path_factory):
    """The digits model exported with --compact-kernel 9 and the default gate (100 % agreement on the photos)."""
    out = tmp_path_factory.mktemp("compact")
    code = main([CHECKPOINT, "--size", "32", "--out", str(out), "--name", "digits9", "--compact-kernel", "9"])
    return code, out / "digits9"


def test_compact_export_records_what_it_approximated(compact_digits):
    code, folder = compact_digits
    assert code == 0
    meta = json.loads((folder / "niff.json").read_text())
    record = meta["compact"]
    assert record["mode"] == "kernel" and record["kernel"] == 9 and record["mass"] is None
    assert [c["kernel"] for c in record["layers"]] == [9, 9, 9, None, None]
    assert record["layers"][3]["reason"] == "a 9x9 window holds the whole 8x8 kernel"
    assert record["layers"][4]["reason"].startswith("4x4 map: below 8x8")
    report = analyse_model(niff.load_checkpoint(CHECKPOINT), 32)
    for choice, stats in zip(record["layers"][:3], report.layers[:3], strict=True):
        assert choice["mass_kept"] == pytest.approx(stats.mass_ratio[4])
        assert choice["spectral_error"] == pytest.approx(stats.spectral_error[4])
    agreement = record["agreement"]
    assert agreement["passed"] and agreement["min_agreement"] == 1.0
    assert agreement["gate"] == "agreement" and agreement["gated_inputs"] == ["photos"]
    assert {(r["candidate"], r["inputs"]) for r in agreement["rows"]} == {
        (c, i) for c in ("compact vs eager", "compact vs exact") for i in ("random", "photos")
    }
    assert all(0 < r["rel_err"] < 1 for r in agreement["rows"])  # an approximation, and measured as one
    openvino = {"onnx (fp32) openvino vs compact"} if openvino_installed() else set()
    assert meta["parity"]["passed"] and {r["candidate"] for r in meta["parity"]["rows"]} == {
        "baked (torch)",
        "onnx (fp32) vs compact",
        "torchscript (fp32) vs compact",
        *openvino,
    }
    assert meta["artifacts"]["onnx"]["opset"] == 18  # the portable padding needs no Pad mode "wrap" (opset 19)
    # The layers that stayed spectral (maps 8 and 4) are lowered like an exact export's, and recorded.
    spectral = [c["layer"] for c in record["layers"] if c["kernel"] is None]
    for fmt, lowering in (("onnx", "kronecker"), ("torchscript", "fft")):
        layers = meta["artifacts"][fmt]["spectral_layers"]
        assert [layer["layer"] for layer in layers] == spectral
        assert {layer["lowering"] for layer in layers} == {lowering}


def test_compact_onnx_pads_portably_by_default(compact_digits):
    """Four Slices and two Concats per compacted layer (torch's circular padding), which OpenVINO reads; the
    one wrap Pad of --target onnxruntime is tested in test_openvino.py."""
    graph = onnx.load(str(compact_digits[1] / "1" / "model.onnx")).graph
    assert not [node for node in graph.node if node.op_type == "Pad"]
    assert len([node for node in graph.node if node.op_type == "Slice"]) == 4 * 3


def test_compact_summary_says_which_layers_stay_spectral(tmp_path, capsys):
    out = tmp_path / "models"
    assert (
        main(
            [
                CHECKPOINT,
                "--size",
                "32",
                "--out",
                str(out),
                "--format",
                "onnx",
                "--compact",
                "0.9",
                "--compact-kernel",
                "7",
            ]
        )
        == 0
    )
    stdout = capsys.readouterr().out
    assert "Compact export (--compact 0.9 --compact-kernel 7): 4 of 5 NIFF filter layers" in stdout
    assert "spectral: 4x4 map: below 8x8 the exact layer costs little" in stdout
    assert "onnx (fp32) vs compact" in stdout and "compact vs exact" in stdout
    assert "gate: top-1 agreement >= 100.00% on images (photos)" in stdout


@pytest.fixture(scope="module")
def held_out_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    _, _, images, _ = digits.load_split()
    for index in range(60):
        Image.fromarray(images[index]).save(folder / f"{index:03d}.png")
    return folder


def test_gate_fails_below_the_minimum_agreement(tmp_path, held_out_folder, capsys):
    out = tmp_path / "models"
    out.mkdir()
    args = [CHECKPOINT, "--size", "32", "--out", str(out), "--format", "onnx", "--compact-kernel", "5"]
    assert main([*args, "--calibration", str(held_out_folder)]) == 1
    err = capsys.readouterr().err
    assert (
        f"the compact model's top-1 agreement on the calibration images ({held_out_folder}) is below "
        "--compact-min-agreement 1; nothing was written" in err
    )
    assert "FAIL" in err and "accept less agreement with --compact-min-agreement" in err
    assert not any(out.iterdir())
    assert main([*args, "--calibration", str(held_out_folder), "--compact-min-agreement", "0.5"]) == 0
    meta = json.loads((out / "digits_resnet" / "niff.json").read_text())
    (row,) = [
        r
        for r in meta["compact"]["agreement"]["rows"]
        if r["inputs"] == "calibration" and r["candidate"] == "compact vs exact"
    ]
    assert 0.5 <= row["top1_agreement"] < 1.0
    assert meta["compact"]["calibration"] == {
        "folder": held_out_folder.name,
        "images": 60,
        "labelled": False,
        "exact_correct": None,
        "compact_correct": None,
        "max_accuracy_drop": None,
    }
    assert meta["compact"]["agreement"]["gated_inputs"] == ["calibration"]


def _plain_checkpoint(path):
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    torch.save(plain.state_dict(), path)
    return path


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--compact", "1.5"], "--compact is the share of each kernel's L1 mass to keep, in (0, 1]; got 1.5"),
        (["--compact", "0"], "in (0, 1]; got 0"),
        (["--compact", "-0.2"], "in (0, 1]; got -0.2"),
        (["--compact-error", "-1"], "--compact-error is a relative spectral error and must be positive"),
        (["--compact", "0.9", "--compact-error", "0.1"], "give --compact or --compact-error, not both"),
        (["--compact-kernel", "6"], "--compact-kernel must be an odd positive side"),
        (["--compact-kernel", "33"], "--size 32 is too small for --compact-kernel 33"),
        (["--compact-kernel", "9", "--size", "8"], "--size 8 is too small for --compact-kernel 9"),
        (["--compact-kernel", "5", "--compact-min-agreement", "2"], "--compact-min-agreement is a share in [0, 1]"),
        (["--compact-kernel", "5", "--compact-max-accuracy-drop", "0.01"], "give them with --calibration DIR"),
        (["--compact-max-accuracy-drop", "0.01"], "compact export needs --compact MASS"),
        (["--calibration", "."], "compact export needs --compact MASS, --compact-error E or --compact-kernel K"),
        (["--compact-kernel", "5", "--opset", "18", "--target", "onnxruntime"], "needs --opset >= 19"),
    ],
)
def test_user_mistakes(extra, message, tmp_path, capsys):
    size = [] if "--size" in extra else ["--size", "32"]
    assert main([CHECKPOINT, *size, "--out", str(tmp_path), *extra]) == 1
    assert message in _one_error(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("content", ["empty", "text", "broken"])
def test_calibration_folders_without_usable_images(content, tmp_path, capsys):
    folder = tmp_path / "calibration"
    folder.mkdir()
    if content == "text":
        (folder / "notes.txt").write_text("no images here")
    elif content == "broken":
        (folder / "digit.png").write_bytes(b"not a png")
    out = tmp_path / "models"
    assert (
        main([CHECKPOINT, "--size", "32", "--out", str(out), "--compact-kernel", "5", "--calibration", str(folder)])
        == 1
    )
    error = _one_error(capsys.readouterr().err)
    assert ("cannot read the calibration image" if content == "broken" else "holds no images") in error
    assert not out.exists()


def test_missing_calibration_folder(tmp_path, capsys):
    missing = tmp_path / "absent"
    assert (
        main(
            [
                CHECKPOINT,
                "--size",
                "32",
                "--out",
                str(tmp_path / "m"),
                "--compact-kernel",
                "5",
                "--calibration",
                str(missing),
            ]
        )
        == 1
    )
    assert f"calibration folder {missing} does not exist" in _one_error(capsys.readouterr().err)


def test_checkpoint_without_niff_layers(tmp_path, capsys):
    checkpoint = _plain_checkpoint(tmp_path / "plain.pt")
    out = tmp_path / "models"
    assert main([str(checkpoint), "--size", "32", "--out", str(out), "--compact-kernel", "5"]) == 1
    assert "plain.pt holds no NIFF layers" in _one_error(capsys.readouterr().err)
    assert not out.exists()


def test_model_without_filter_layers_cannot_be_compacted(tmp_path):
    model = realistic(
        niff.create_model(
            "resnet18_split", num_classes=4, small_input=True, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1)
        ),
        32,
    )
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], FreqConvDW):
            model.set_submodule(name, nn.Conv2d(module[1].in_planes, module[1].out_planes, 3, padding=1))
    with pytest.raises(ExportError, match="no NIFF filter layers"):
        plan_compaction(model, 32, CompactRequest(kernel=5))


def test_help_explains_the_compact_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--compact MASS",
        "--compact-error E",
        "--compact-kernel K",
        "--calibration DIR",
        "--compact-min-agreement A",
        "--compact-max-accuracy-drop D",
        "Compact export",
    ):
        assert option in text


def test_full_filter_banks_become_full_circular_convolutions(tmp_path):
    model = realistic(
        niff.create_model(
            "resnet18_full", num_classes=4, small_input=True, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1)
        ),
        32,
    )
    result = niff_export.export_model(model, 32, tmp_path, "full", compact=CompactRequest(kernel=5, min_agreement=0.0))
    assert result.parity.passed
    assert [(c.kind, c.kernel) for c in result.compact.layers][:3] == [("full", 5)] * 3
    graph = onnx.load(str(result.path / "1" / "model.onnx")).graph
    pads = {node.output[0] for node in graph.node if node.op_type == "Concat"}  # the padding's last node
    full_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[0] in pads]
    assert len(full_convs) == len(result.compact.compacted)
    assert all(a.i == 1 for n in full_convs for a in n.attribute if a.name == "group")
