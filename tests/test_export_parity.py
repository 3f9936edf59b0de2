"""The parity gate's diagnosis (ill-conditioned model or wrong export) and ``--parity-tolerance``.

An ill-conditioned model is made cheaply and deterministically: one BatchNorm's running mean and bias are
both shifted by the same large offset (in its output units), which leaves the function unchanged but makes
float32 subtract two numbers near the offset, so eager float32 drifts ~offset x 2^-24 from float64, as the
paper's densenet121_full does at 64x64 (5.3e-3).
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from model_helpers import OnePercentOff, realistic

import niff
import niff_export.api
from niff_contract import Manifest, ParityRow, parse_manifest, read_model_folder
from niff_export import ExportError, export_model
from niff_export.cli import main as export_main
from niff_export.parity import DRIFT_CANDIDATE, ParityReport, suggested_tolerance

SIZE = 16
OFFSET = 1e5  # eager float32 drifts ~5e-3 from float64


def _tiny() -> torch.nn.Module:
    torch.manual_seed(3)
    model = niff.create_model(
        "resnet18_split", num_classes=10, small_input=True, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1)
    )
    return realistic(model, SIZE)


def ill_conditioned(model: torch.nn.Module, offset: float = OFFSET) -> torch.nn.Module:
    """The same function, computed as (x - offset·σ/γ)·γ/σ + (β + offset) in float32: cancellation."""
    model = copy.deepcopy(model)
    norm = model.bn1
    with torch.no_grad():
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        norm.running_mean += offset
        norm.bias += scale * offset
    return model


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return _tiny()


@pytest.fixture(scope="module")
def ill(tiny) -> torch.nn.Module:
    return ill_conditioned(tiny)


def test_an_ill_conditioned_model_fails_with_the_diagnosis_and_the_option(ill, tmp_path):
    with pytest.raises(ExportError) as failure:
        export_model(ill, SIZE, tmp_path, name="ill", formats=["onnx"])
    message = str(failure.value)
    assert "parity check failed; nothing was written" in message
    assert "eager float32 vs float64 (the model's own rounding): relative error" in message
    assert "diagnosis: the model is ill-conditioned: eager float32 itself differs from float64 by" in message
    assert "more than the tolerance 0.0001; the export differs from eager float32 by" in message
    assert "--parity-tolerance 0.02 (Python: parity_tolerance=0.02)" in message
    assert "the export is wrong" not in message
    assert not list(tmp_path.iterdir())


def test_parity_tolerance_exports_it_and_records_it_loudly(ill, tmp_path, capsys):
    checkpoint = tmp_path / "ill.pt"
    torch.save(ill.state_dict(), checkpoint)
    args = [str(checkpoint), "--size", str(SIZE), "--out", str(tmp_path / "models"), "--name", "ill"]
    assert export_main([*args, "--format", "onnx", "--parity-tolerance", "0.02"]) == 0
    out, err = capsys.readouterr()
    (warning,) = [line for line in err.splitlines() if line.startswith("niff-export: warning:")]
    assert warning == (
        "niff-export: warning: --parity-tolerance 0.02 replaces the parity gate's default relative tolerance "
        "0.0001 (looser): the artifacts may differ from eager PyTorch by that much; niff.json records it, with "
        "the eager model's float32-vs-float64 drift"
    )
    assert "tolerance: relative error <= 0.02, SET BY --parity-tolerance (default 0.0001)" in out
    assert "eager float32 vs float64 (the model's own rounding)" in out and "warning:" not in out

    folder = tmp_path / "models" / "ill"
    parity = json.loads((folder / "niff.json").read_text())["parity"]
    assert parity["tolerance"] == 0.02 and parity["passed"]
    assert max(row["rel_err"] for row in parity["rows"]) > 1e-3  # it needed the option
    override = parity["tolerance_override"]
    assert override["default_tolerance"] == 1e-4
    assert [(row["candidate"], row["inputs"]) for row in override["float32_drift"]] == [
        (DRIFT_CANDIDATE, "random"),
        (DRIFT_CANDIDATE, "photos"),
    ]
    assert all(1e-3 < row["rel_err"] < 2e-2 for row in override["float32_drift"])
    assert read_model_folder(folder).manifest.parity.tolerance_override.default_tolerance == 1e-4


def test_a_wrong_export_is_called_wrong_and_the_option_is_not_offered(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(niff_export.api, "in_precision", lambda model, fp16: OnePercentOff(model))
    with pytest.raises(ExportError) as failure:
        export_model(tiny, SIZE, tmp_path, name="wrong", formats=["onnx"])
    message = str(failure.value)
    # Either runtime's row may be named: ONNX Runtime's, or OpenVINO's when installed (both are 1 % off).
    assert re.search(
        r"diagnosis: the export is wrong: onnx \(fp32\)( openvino)? differs from eager float32 by 1.0e-02", message
    )
    assert "far above what rounding explains" in message and "ill-conditioned model;" in message
    assert "--parity-tolerance" not in message

    # A looser tolerance lets it through, but the summary says what it hides.
    result = export_model(tiny, SIZE, tmp_path, name="wrong", formats=["onnx"], parity_tolerance=0.05)
    assert result.parity.passed
    assert "warning: the gate passed at --parity-tolerance 0.05, but the export is wrong" in result.parity.table()


def test_a_default_export_measures_no_drift_and_records_no_override(tiny, tmp_path):
    result = export_model(tiny, SIZE, tmp_path, name="fine", formats=["onnx"])
    assert result.parity.drift is None and result.parity.diagnosis() is None
    assert "tolerance_override" not in json.loads((result.path / "niff.json").read_text())["parity"]
    assert result.manifest.parity.tolerance_override is None


def test_folders_without_the_override_still_load(tiny, tmp_path):
    """niff.json of earlier exporters has no tolerance_override; it reads as None."""
    result = export_model(tiny, SIZE, tmp_path, name="old", formats=["onnx"])
    data = json.loads((result.path / "niff.json").read_text())
    assert parse_manifest(data).parity.tolerance_override is None
    data["parity"]["tolerance_override"] = None
    assert isinstance(parse_manifest(data), Manifest)


@pytest.mark.parametrize("value", ["0", "1", "-1e-3", "nan", "inf", "lots"])
def test_a_tolerance_outside_zero_to_one_is_a_usage_error(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["ckpt.pt", "--size", "16", "--out", str(tmp_path), f"--parity-tolerance={value}"])
    assert exit_info.value.code == 2
    assert "expected a relative error between 0 and 1" in capsys.readouterr().err


def test_the_python_api_checks_the_tolerance_before_building(tiny, tmp_path):
    with pytest.raises(ExportError, match="--parity-tolerance must be a relative error between 0 and 1"):
        export_model(tiny, SIZE, tmp_path, parity_tolerance=2.0)
    assert not list(tmp_path.iterdir())


def _row(candidate: str, inputs: str, rel_err: float, top1: float = 1.0) -> ParityRow:
    return ParityRow(candidate=candidate, inputs=inputs, max_abs=rel_err, rel_err=rel_err, top1_agreement=top1)


def _drift(random: float, photos: float, photos_top1: float = 1.0) -> tuple[ParityRow, ...]:
    return (_row(DRIFT_CANDIDATE, "random", random), _row(DRIFT_CANDIDATE, "photos", photos, photos_top1))


def test_fp16_rounding_is_expected_to_be_8192_times_larger():
    rows = (
        _row("baked (torch)", "random", 1e-6),
        _row("onnx (fp16)", "random", 2e-2),
        _row("onnx (fp16)", "photos", 1e-3),
    )
    # Drift 1e-6 predicts ~8e-3 in float16: 2e-2 is rounding, amplified.
    diagnosis = ParityReport(rows, 1e-2, drift=_drift(1e-6, 1e-6)).diagnosis()
    assert diagnosis.ill_conditioned and "computed in float16" in diagnosis.text
    assert "within the tolerance 0.01, but the model amplifies rounding" in diagnosis.text
    assert "--parity-tolerance 0.05" in diagnosis.text
    # Drift 1e-8 (below float32's roundoff) predicts ~5e-4: 2e-2 is not rounding.
    assert not ParityReport(rows, 1e-2, drift=_drift(1e-8, 1e-8)).diagnosis().ill_conditioned


def test_a_top1_flip_is_not_a_tolerance_matter():
    rows = (_row("onnx (fp32)", "random", 3e-6), _row("onnx (fp32)", "photos", 3e-6, top1=0.5))
    report = ParityReport(rows, 1e-4, drift=_drift(2e-6, 2e-6))
    assert not report.passed
    text = report.diagnosis().text
    assert "failed on a photo's top-1 class" in text and "--parity-tolerance does not relax" in text
    flipped = ParityReport(rows, 1e-4, drift=_drift(2e-6, 2e-6, photos_top1=0.5)).diagnosis().text
    assert "Eager float32 already changes the top-1 class of a photo" in flipped


def test_no_tolerance_is_suggested_for_an_output_without_significant_digits():
    rows = (_row("onnx (fp32)", "random", 0.8), _row("onnx (fp32)", "photos", 0.1))
    text = ParityReport(rows, 1e-4, drift=_drift(0.5, 0.5)).diagnosis().text
    assert "no tolerance makes it usable" in text and "--parity-tolerance" not in text


@pytest.mark.parametrize(
    "error, expected", [(4.6e-3, 1e-2), (5.5e-3, 2e-2), (1e-2, 2e-2), (2.4e-4, 5e-4), (5e-2, 1e-1), (0.3, 1.0)]
)
def test_suggested_tolerances_are_round_and_at_least_twice_the_error(error, expected):
    assert suggested_tolerance(error) == pytest.approx(expected)
