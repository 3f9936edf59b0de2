"""Export and service share one definition of the model folder; each point where two copies once drifted
apart is checked here from both sides."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from model_helpers import zoo_model

from niff_contract import (
    FORMAT_VERSION,
    ContractError,
    Manifest,
    check_model_name,
    parse_config,
    read_model_folder,
)
from niff_export import ExportError
from niff_export.cli import main as export_main
from niff_export.repository import check_name

ROOT = Path(__file__).resolve().parents[1]
SMALL = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    torch.save(zoo_model("resnet18_split", SMALL).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    assert export_main([str(checkpoint), "--size", str(SMALL), "--out", str(out), "--name", "small",
                        "--format", "onnx", "--interpolation", "bicubic", "--crop-pct", "0.95",
                        "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--max-batch-size", "12",
                        "--max-batch-delay-ms", "2.5"]) == 0  # fmt: skip
    return out / "small"


def test_the_name_rule_is_the_same_on_both_sides(exported: Path, tmp_path: Path) -> None:
    longest, too_long = "m" * 128, "m" * 129
    assert check_name(longest) == check_model_name(longest) == longest
    with pytest.raises(ExportError, match="at most 128 characters"):
        check_name(too_long)
    folder = tmp_path / too_long
    shutil.copytree(exported, folder)
    with pytest.raises(ContractError, match="at most 128 characters"):
        read_model_folder(folder)


def test_options_are_recorded_where_the_server_reads_them(exported: Path) -> None:
    folder = read_model_folder(exported)
    recipe = folder.manifest.preprocessing
    assert (recipe.interpolation, recipe.crop_pct, recipe.resize) == ("bicubic", 0.95, 33)
    assert recipe.mean == (0.5,) * 3 and recipe.std == (0.25,) * 3
    assert (folder.max_batch_size, folder.max_batch_delay_s) == (12, 0.0025)
    config = parse_config((exported / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert folder.manifest.format_version == FORMAT_VERSION


def test_written_parity_rows_have_the_documented_keys(exported: Path) -> None:
    """docs/model-repository.md's example is a valid niff.json, keyed as written down to parity rows and layers."""
    doc = (ROOT / "docs" / "model-repository.md").read_text()
    example = json.loads(re.search(r"```json\n(.*?)\n```", doc, re.S).group(1))
    Manifest.model_validate(example)
    written = json.loads((exported / "niff.json").read_text())
    assert example["parity"]["rows"][0].keys() == written["parity"]["rows"][0].keys()
    assert example.keys() == written.keys()
    documented, onnx = example["artifacts"]["onnx"], written["artifacts"]["onnx"]
    assert documented.keys() == onnx.keys()
    assert documented["spectral_layers"][0].keys() == onnx["spectral_layers"][0].keys()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--crop-pct", "1.5"], "invalid preprocessing: --crop-pct: Input should be less than or equal to 1"),
        (["--std", "0,1,1"], "invalid preprocessing: --std: values must be at least 1e-06"),
        (["--mean", "nan,0,0"], "invalid preprocessing: --mean: must be finite numbers"),
        (["--max-batch-delay-ms", "-1"], "--max-batch-delay-ms must be between 0 and 60000"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    assert export_main([str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), *options]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("niff-export: error: ") and message in error
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("option", "text"), [("--mean", "1,2"), ("--std", "a,b,c")])
def test_malformed_triples_are_usage_errors(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, text: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), option, text])
    assert exit_info.value.code == 2
    assert "expected three comma-separated numbers R,G,B" in capsys.readouterr().err


def test_a_labels_file_with_a_blank_line_is_refused_like_the_server_refuses_it(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["a", "b", "", "c"] + [str(i) for i in range(6)]) + "\n")
    assert export_main([str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path / "out"),
                        "--labels", str(labels)]) == 1  # fmt: skip
    assert "line 3 is blank" in capsys.readouterr().err
