"""The compact export's gate: the user's images decide it when given — the top-1 accuracy drop on labelled
ones (DIR/<class name>/<image>), agreement on a flat folder — and the two generic photos only without them,
in which case a failure says to pass --calibration. Run on the shipped digits model at 32x32 through the CLI
(in-process), with 120 of its held-out digits (nos. 200-319) as labelled images: the exact model gets 118
right, --compact 0.8 changes two classes and gets 118 right too, --compact-kernel 9 gets 116."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from niff import digits
from niff_contract import Agreement, CalibrationRecord
from niff_export.cli import main
from niff_export.parity import AccuracyDrop

CHECKPOINT = str(digits.DEFAULT_CHECKPOINT)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "digits"  # ten digit PNGs, one folder


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Held-out digits 200-319 as DIR/<digit>/<n>.png (all 450 would only make the exports slower)."""
    root = tmp_path_factory.mktemp("held_out")
    _, _, images, labels = digits.load_split()
    for index in range(200, 320):
        folder = root / digits.LABELS[labels[index]]
        folder.mkdir(exist_ok=True)
        Image.fromarray(images[index], "RGB").save(folder / f"{index:03d}.png")
    return root


def _export(out: Path, *extra: str) -> int:
    return main([CHECKPOINT, "--size", "32", "--out", str(out), "--format", "onnx", *extra])


def _one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("niff-export: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def _compact_record(out: Path) -> dict:
    return json.loads((out / "digits_resnet" / "niff.json").read_text())["compact"]


def test_labelled_images_gate_on_the_accuracy_drop_not_on_agreement(held_out, tmp_path, capsys):
    # --compact 0.8 changes the class of two of these digits and of one photo, but loses no accuracy.
    assert _export(tmp_path, "--compact", "0.8", "--calibration", str(held_out)) == 0
    stdout = capsys.readouterr().out
    assert "exact 118/120 = 98.33 %, compact 118/120 = 98.33 %, drop 0.00 points  ok" in stdout
    assert "gate: top-1 accuracy drop <= 0.00 points on the labelled calibration images" in stdout
    record = _compact_record(tmp_path)
    assert record["calibration"] == {
        "folder": held_out.name,
        "images": 120,
        "labelled": True,
        "exact_correct": 118,
        "compact_correct": 118,
        "max_accuracy_drop": 0.0,
    }
    agreement = record["agreement"]
    assert agreement["passed"] and agreement["gate"] == "accuracy" and agreement["gated_inputs"] == []
    photos = [row["top1_agreement"] for row in agreement["rows"] if row["inputs"] == "photos"]
    assert photos == [0.5, 0.5]  # reported, not gated


def test_an_accuracy_drop_above_the_allowance_fails_and_says_how_to_proceed(held_out, tmp_path, capsys):
    out = tmp_path / "models"
    out.mkdir()
    assert _export(out, "--compact-kernel", "9", "--calibration", str(held_out)) == 1
    stderr = capsys.readouterr().err
    assert "accuracy on the labelled calibration images drops 1.67 points, more than --compact-max-accuracy-drop 0" in (
        _one_error(stderr)
    )
    assert "exact 118/120 = 98.33 %, compact 116/120 = 96.67 %, drop 1.67 points  FAIL" in stderr
    assert "accept the drop with --compact-max-accuracy-drop 0.017" in stderr
    assert not any(out.iterdir())
    assert (
        _export(out, "--compact-kernel", "9", "--calibration", str(held_out), "--compact-max-accuracy-drop", "0.017")
        == 0
    )
    calibration = _compact_record(out)["calibration"]
    assert (calibration["exact_correct"], calibration["compact_correct"]) == (118, 116)
    assert calibration["labelled"] and calibration["max_accuracy_drop"] == 0.017


def test_a_flat_calibration_folder_gates_agreement_and_not_the_photos(tmp_path, capsys):
    # On the photos --compact 0.8 agrees 50 %; on the ten example digits 100 %: the digits decide.
    assert _export(tmp_path, "--compact", "0.8", "--calibration", str(EXAMPLES)) == 0
    assert "gate: top-1 agreement >= 100.00% on images (calibration); the photos are reported, not gated" in (
        capsys.readouterr().out
    )
    record = _compact_record(tmp_path)
    assert record["agreement"]["gate"] == "agreement" and record["agreement"]["gated_inputs"] == ["calibration"]
    assert record["calibration"]["images"] == 10 and not record["calibration"]["labelled"]


def test_without_calibration_the_photos_gate_and_the_failure_points_to_calibration(tmp_path, capsys):
    assert _export(tmp_path, "--compact", "0.8") == 1
    stderr = capsys.readouterr().err
    assert "top-1 agreement on the gate's photos is below --compact-min-agreement 1" in _one_error(stderr)
    assert "The photos are two generic landscape photos" in stderr
    assert "Pass --calibration DIR with images from the model's domain" in stderr
    assert "labelled (DIR/<class name>/<image>" in stderr
    assert not any(tmp_path.iterdir())


def _mixed(folder: Path) -> None:
    (folder / "3").mkdir(parents=True)
    shutil.copy(EXAMPLES / "digit-3.png", folder / "3")
    shutil.copy(EXAMPLES / "digit-4.png", folder)


def _unknown_class(folder: Path) -> None:
    (folder / "eleven").mkdir(parents=True)
    shutil.copy(EXAMPLES / "digit-3.png", folder / "eleven")


@pytest.mark.parametrize(
    ("layout", "extra", "message"),
    [
        (_mixed, [], "mixes class folders (3) with loose images (digit-4.png): give either labelled images"),
        (_unknown_class, [], "--calibration {folder}: the class folders 'eleven' are not labels of the model"),
        (
            lambda folder: shutil.copytree(EXAMPLES, folder),
            ["--compact-max-accuracy-drop", "0.01"],
            "--compact-max-accuracy-drop needs labelled images, but --calibration {folder} is a flat folder",
        ),
    ],
)
def test_calibration_folder_mistakes_are_one_line(layout, extra, message, tmp_path, capsys):
    folder = tmp_path / "calibration"
    layout(folder)
    out = tmp_path / "models"
    assert _export(out, "--compact-kernel", "9", "--calibration", str(folder), *extra) == 1
    assert message.format(folder=folder) in _one_error(capsys.readouterr().err)
    assert not out.exists()


def test_labelled_images_refuse_the_agreement_option_they_would_ignore(held_out, tmp_path, capsys):
    assert (
        _export(tmp_path, "--compact-kernel", "9", "--calibration", str(held_out), "--compact-min-agreement", "0.9")
        == 1
    )
    assert "holds labelled images, so the gate is the top-1 accuracy drop" in _one_error(capsys.readouterr().err)


@pytest.mark.parametrize(("compact_correct", "passed"), [(89, True), (88, False)])
def test_a_drop_equal_to_the_allowance_passes(compact_correct, passed):
    drop = AccuracyDrop(images=100, exact_correct=90, compact_correct=compact_correct, max_drop=0.01)
    assert drop.passed is passed


def test_records_of_earlier_exporters_still_read():
    calibration = CalibrationRecord.model_validate({"folder": "images", "images": 60})
    assert not calibration.labelled and calibration.exact_correct is None
    agreement = Agreement.model_validate({"min_agreement": 1.0, "passed": True, "rows": []})
    assert agreement.gate == "agreement" and agreement.gated_inputs is None
