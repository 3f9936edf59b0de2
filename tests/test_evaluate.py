"""niff-eval on the digits set as an ImageFolder tree: the README's held-out figures, through the model
folder's own preprocessing, for a checkpoint (eager, exact, compact) and for an exported folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from niff import digits
from niff_export import export_checkpoint
from niff_export.evaluate_cli import main

CHECKPOINT = str(digits.DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("held_out")
    assert digits.write_held_out(root) == 450
    return root


def test_a_checkpoint_its_exact_and_compact_exports_side_by_side(
    held_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        [CHECKPOINT, "--size", "32", "--images", str(held_out), "--compact-kernel", "9", "--out", str(tmp_path)]
    )
    assert status == 0
    scores = {row["candidate"]: row for row in json.loads((tmp_path / "eval.json").read_text())["scores"]}
    assert scores["eager PyTorch"]["top1"] == 446 and scores["exact export (ONNX)"]["top1"] == 446
    assert scores["compact export (ONNX)"]["top1"] == 444
    assert all(row["images"] == 450 and row["top5"] >= row["top1"] for row in scores.values())
    table = capsys.readouterr().out
    assert "| exact export (ONNX) | 99.11 % (446/450) |" in table
    assert (tmp_path / "eval.md").read_text() == table


def test_an_exported_folder_is_evaluated_as_it_is_served(
    held_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = export_checkpoint(CHECKPOINT, 32, tmp_path, name="digits", formats=["onnx"]).path
    assert main([str(folder), "--images", str(held_out)]) == 0
    assert "| exact export (ONNX, digits) | 99.11 % (446/450) |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("no class folders", "no class folders (expected DIR/<class name>/<image>)"),
        ("unknown class", "the class folders 'eleven' are not labels of the model"),
        ("not an image", "notes.txt: the data is not a JPEG, PNG"),
    ],
)
def test_a_wrong_image_folder_is_one_line(
    held_out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str, message: str
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    if layout == "unknown class":
        (images / "eleven").mkdir()
    if layout == "not an image":
        shutil.copytree(held_out / "3", images / "3")
        (images / "3" / "notes.txt").write_text("not an image")
    folder = export_checkpoint(CHECKPOINT, 32, tmp_path, name="digits", formats=["onnx"]).path
    assert main([str(folder), "--images", str(images)]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([CHECKPOINT], "a checkpoint needs --size"),
        (["missing.pt", "--size", "32"], "missing.pt: no such checkpoint file or model folder"),
    ],
)
def test_wrong_arguments_are_one_line(
    held_out: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert main([*arguments, "--images", str(held_out)]) == 2
    assert message in capsys.readouterr().err
