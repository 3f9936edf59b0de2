"""Model-folder validation (the contract's reader): a broken or hostile folder is an error naming the folder,
the file and the problem; nothing outside the folder is ever read."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from niff_contract import ContractError, config_json, parse_config, read_model_folder, scan_repository

from .conftest import MINI, TINY

Damage = Callable[[Path], None]


@pytest.fixture
def broken(repository: Path, tmp_path: Path) -> Callable[[Damage], Path]:
    """A copy of the tiny model folder after ``damage`` was done to it."""

    def make(damage: Damage) -> Path:
        folder = tmp_path / "repo" / TINY
        shutil.copytree(repository / TINY, folder)
        damage(folder)
        return folder

    return make


def edit_json(**changes: object) -> Damage:
    def damage(folder: Path) -> None:
        manifest = json.loads((folder / "niff.json").read_text())
        for key, value in changes.items():
            target = manifest
            *parents, leaf = key.split("__")
            for parent in parents:
                target = target[parent]
            target[leaf] = value
        (folder / "niff.json").write_text(json.dumps(manifest))

    return damage


def symlink(name: str, target: str) -> Damage:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        os.symlink(target, folder / name)

    return damage


def test_scan_reads_every_model(repository: Path) -> None:
    folders = scan_repository(repository)
    assert [f.name for f in folders] == [MINI, TINY]
    tiny = folders[1]
    assert (tiny.version, tiny.input_size, tiny.num_classes) == ("1", 32, 10)
    assert tiny.labels[3] == "three"
    assert tiny.manifest.preprocessing.resize == 36
    assert tiny.artifact_path("torchscript") == tiny.path / "1" / "model.pt"
    assert folders[0].artifact_path("torchscript") is None


def test_batching_values_come_from_config_pbtxt(repository: Path) -> None:
    tiny = read_model_folder(repository / TINY)
    config = parse_config((repository / TINY / "config.pbtxt").read_text())
    assert tiny.max_batch_size == config.max_batch_size == tiny.manifest.max_batch_size
    assert tiny.max_batch_delay_s == config.dynamic_batching.max_queue_delay_microseconds / 1e6 > 0


def test_config_json_is_tritons_shape(repository: Path) -> None:
    config = config_json(read_model_folder(repository / TINY).config)
    assert config["name"] == TINY and config["platform"] == "onnxruntime_onnx"
    assert config["input"][0]["dims"] == [3, 32, 32] and config["output"][0]["dims"] == [10]
    assert isinstance(config["dynamic_batching"]["max_queue_delay_microseconds"], int)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "niff.json").unlink(), "'niff.json' is missing"),
        (lambda f: (f / "niff.json").write_text("{"), "niff.json is not JSON"),
        (edit_json(format_version=3), "format 3, written by a newer niff-export"),
        (edit_json(num_classes=11), r"output.shape \[10\] is not \[11\]"),
        (edit_json(name="other"), "names the model 'other'"),
        (edit_json(artifacts={}), "artifacts names none of onnx, torchscript"),
        (edit_json(preprocessing__resize=40), r"resize 40 is not floor\(input_size / crop_pct\) = 36"),
        (lambda f: (f / "1" / "model.onnx").unlink(), "'1/model.onnx' is missing"),
        (lambda f: (f / "labels.txt").write_text("a\nb\n"), "labels file has 2 lines for 10 classes"),
        (lambda f: (f / "labels.txt").write_text("a\n\nb\n"), "line 2 is blank"),
        (lambda f: (f / "config.pbtxt").unlink(), "'config.pbtxt' is missing"),
        (lambda f: (f / "config.pbtxt").write_text("name: {"), "config.pbtxt is not a Triton model configuration"),
        (lambda f: (f / "config.pbtxt").write_text('name: "tiny" shoe_size: 3'), 'has no field named "shoe_size"'),
        (
            lambda f: (f / "config.pbtxt").write_text((f / "config.pbtxt").read_text().replace("dims: 10", "dims: 12")),
            r"output 'logits' is TYPE_FP32 \[12\], niff.json says TYPE_FP32 \[10\]",
        ),
        (
            lambda f: (f / "config.pbtxt").write_text(
                (f / "config.pbtxt").read_text().replace("max_batch_size: ", "max_batch_size: 1")
            ),
            "max_batch_size is 1",
        ),
    ],
)
def test_broken_folder_is_a_clear_error(broken: Callable[[Damage], Path], damage: Damage, message: str) -> None:
    folder = broken(damage)
    with pytest.raises(ContractError, match=message) as error:
        read_model_folder(folder)
    assert str(folder) in str(error.value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (edit_json(labels_file="/etc/passwd"), "'/etc/passwd' must be a relative path inside the model folder"),
        (edit_json(labels_file="../../etc/passwd"), "must be a relative path inside"),
        (edit_json(labels_file="/dev/zero"), "must be a relative path inside"),
        (symlink("labels.txt", "/etc/hostname"), "'labels.txt' leads out of the model folder"),
        (symlink("labels.txt", "/dev/zero"), "leads out of the model folder"),
        (edit_json(artifacts__onnx__path="1/../../../etc/hostname"), "must be a relative path inside"),
        (edit_json(artifacts__onnx__path="/etc/hostname"), "is not in the folder of version 1"),
        (
            lambda f: (shutil.move(f / "niff.json", f.parent), os.symlink("../niff.json", f / "niff.json")),
            "'niff.json' leads out",
        ),
        (lambda f: (f / "labels.txt").write_bytes(b"x\n" * (9 << 20)), "labels.txt is larger than"),
        (lambda f: (f / "niff.json").write_bytes(b" " * (2 << 20)), "niff.json is larger than"),
        (lambda f: ((f / "labels.txt").unlink(), (f / "labels.txt").mkdir()), "'labels.txt' is not a regular file"),
        (edit_json(artifacts__onnx__sha256=None), "artifacts.onnx.sha256"),
        (edit_json(preprocessing__std=[1e-45, 1, 1]), "std: Value should be|at least 1e-06"),
        (edit_json(preprocessing__mean=["NaN", 0, 0]), "mean"),
        (edit_json(preprocessing__input_size=100000), "input_size"),
    ],
)
def test_hostile_folder_is_refused(broken: Callable[[Damage], Path], damage: Damage, message: str) -> None:
    folder = broken(damage)
    with pytest.raises(ContractError, match=message):
        read_model_folder(folder)


def test_a_symlink_inside_the_folder_is_followed(broken: Callable[[Damage], Path]) -> None:
    def relink(folder: Path) -> None:
        (folder / "labels.txt").rename(folder / "names.txt")
        os.symlink("names.txt", folder / "labels.txt")

    assert read_model_folder(broken(relink)).labels[3] == "three"


def test_a_format_1_folder_still_reads(broken: Callable[[Damage], Path]) -> None:
    """Folders written by niff-export 0.1 (format 1) have the same fields."""
    assert read_model_folder(broken(edit_json(format_version=1))).manifest.format_version == 1


def test_a_format_1_folder_that_does_not_fit_says_to_re_export(broken: Callable[[Damage], Path]) -> None:
    with pytest.raises(ContractError, match="written in format 1: re-export it"):
        read_model_folder(broken(edit_json(format_version=1, artifacts__onnx__sha256=None)))


def test_sha256_mismatch_is_caught_when_loading(broken: Callable[[Damage], Path]) -> None:
    folder = read_model_folder(broken(edit_json(artifacts__onnx__sha256="0" * 64)))
    with pytest.raises(ContractError, match="does not match its sha256"):
        folder.verify_artifact("onnx")


def test_empty_or_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="holds no model folders"):
        scan_repository(tmp_path)
    with pytest.raises(ContractError, match="is not a directory"):
        scan_repository(tmp_path / "nope")
