"""Model-folder validation: a broken folder is a start-up error naming the folder, the file and the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from niff_serve import pbtxt
from niff_serve.errors import ConfigurationError
from niff_serve.repository import read_model_folder, scan_repository

from .conftest import MINI, TINY


@pytest.fixture
def broken(repository: Path, tmp_path: Path) -> Callable[[Callable[[Path], None]], Path]:
    """A copy of the tiny model folder after ``damage`` was done to it."""

    def make(damage: Callable[[Path], None]) -> Path:
        folder = tmp_path / TINY
        shutil.copytree(repository / TINY, folder)
        damage(folder)
        return folder

    return make


def edit_json(**changes: object) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        manifest = json.loads((folder / "niff.json").read_text())
        manifest.update(changes)
        (folder / "niff.json").write_text(json.dumps(manifest))

    return damage


def test_scan_reads_every_model(repository: Path) -> None:
    folders = scan_repository(repository)
    assert [f.name for f in folders] == [MINI, TINY]
    tiny = folders[1]
    assert (tiny.version, tiny.input_size, tiny.num_classes, tiny.max_batch_size) == ("1", 32, 10, 64)
    assert tiny.labels[3] == "three"
    assert tiny.manifest.preprocessing.resize_size == 36
    assert tiny.artifact_path("torchscript") == tiny.path / "1" / "model.pt"
    assert folders[0].artifact_path("torchscript") is None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "niff.json").unlink(), "niff.json is missing"),
        (lambda f: (f / "niff.json").write_text("{"), "niff.json is unreadable"),
        (edit_json(format_version=2), "format_version: Input should be 1"),
        (edit_json(num_classes=11), r"output.shape \[10\] is not \[11\]"),
        (edit_json(name="other"), "names the model 'other'"),
        (edit_json(artifacts={}), "artifacts names none of onnx, torchscript"),
        (edit_json(preprocessing={"input_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1]}), "needs 'resize' or"),
        (lambda f: (f / "1" / "model.onnx").unlink(), "onnx artifact '1/model.onnx' is missing"),
        (lambda f: (f / "labels.txt").write_text("a\nb\n"), "labels.txt has 2 lines for 10 classes"),
        (lambda f: (f / "config.pbtxt").unlink(), "config.pbtxt is missing"),
        (lambda f: (f / "config.pbtxt").write_text("name: {"), "config.pbtxt is unreadable"),
        (
            lambda f: (f / "config.pbtxt").write_text((f / "config.pbtxt").read_text().replace("10 ]", "12 ]")),
            r"output 'logits' is \['TYPE_FP32'\] \[12\]",
        ),
    ],
)
def test_broken_folder_is_a_clear_error(
    broken: Callable[[Callable[[Path], None]], Path], damage: Callable[[Path], None], message: str
) -> None:
    folder = broken(damage)
    with pytest.raises(ConfigurationError, match=message) as error:
        read_model_folder(folder)
    assert str(folder) in str(error.value)


def test_sha256_mismatch_is_caught_when_loading(broken: Callable[[Callable[[Path], None]], Path]) -> None:
    folder = read_model_folder(broken(edit_json(artifacts={"onnx": {"path": "1/model.onnx", "sha256": "0" * 64}})))
    with pytest.raises(ConfigurationError, match="does not match its sha256"):
        folder.verify_artifact("onnx")


def test_empty_or_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="holds no model folders"):
        scan_repository(tmp_path)
    with pytest.raises(ConfigurationError, match="is not a directory"):
        scan_repository(tmp_path / "nope")


def test_pbtxt_reads_a_triton_config() -> None:
    config = pbtxt.parse(
        """
        name: "m"  # comment
        max_batch_size: 8
        input [ { name: "input" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] } ]
        output { name: 'logits', dims: [-1] }
        dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [4, 8] }
        parameters { key: "a" value: { string_value: "x\\"y" } }
        """
    )
    assert config["name"] == ["m"] and config["max_batch_size"] == [8]
    assert config["input"][0]["dims"] == [3, 32, 32] and config["input"][0]["data_type"] == ["TYPE_FP32"]
    assert config["output"][0] == {"name": ["logits"], "dims": [-1]}
    assert config["dynamic_batching"][0]["preferred_batch_size"] == [4, 8]
    assert config["parameters"][0]["value"][0]["string_value"] == ['x"y']
    for bad in ("name:", "a { b: 1", "x: [1, 2", "{", 'a: "x'):
        with pytest.raises(pbtxt.PbtxtError):
            pbtxt.parse(bad)
