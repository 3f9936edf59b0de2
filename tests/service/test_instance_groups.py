"""config.pbtxt's ``instance_group`` (Triton's field): niff-export writes one instance on the device found, and
niff-serve honours the count (batches of a model at once) and the kind (the device)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tiny_onnx

from niff_contract import ContractError, instance_groups, parse_config, read_model_folder
from niff_serve.core.backends import choose_backend
from niff_serve.core.settings import Settings

pytestmark = pytest.mark.fast


def folder_with(tmp_path: Path, groups: str) -> Path:
    folder = tiny_onnx.write_folder(tmp_path, "tiny", size=8)
    config = folder / "config.pbtxt"
    text = config.read_text()
    start = text.index("instance_group")
    config.write_text(text[:start] + groups + "\n")
    return folder


def test_exports_write_one_instance_on_the_device_found(tmp_path: Path):
    folder = tiny_onnx.write_folder(tmp_path, "tiny", size=8)
    assert instance_groups(parse_config((folder / "config.pbtxt").read_text())) == (1, "auto")


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ("instance_group { count: 3 kind: KIND_CPU }", (3, "cpu")),
        ("instance_group { count: 2 } instance_group { count: 2 }", (4, "auto")),
        ("instance_group { kind: KIND_GPU gpus: 0 }", (1, "gpu")),
    ],
)
def test_counts_and_kinds(tmp_path: Path, groups: str, expected: tuple[int, str]):
    assert instance_groups(read_model_folder(folder_with(tmp_path, groups)).config) == expected


@pytest.mark.parametrize(
    ("groups", "words"),
    [
        ("instance_group { kind: KIND_CPU } instance_group { kind: KIND_GPU }", "one kind per model"),
        ("instance_group { kind: KIND_MODEL }", "KIND_MODEL"),
        ("instance_group { count: 99 }", "at most 16"),
    ],
)
def test_what_one_server_cannot_honour_is_refused_when_the_folder_is_read(tmp_path: Path, groups: str, words: str):
    with pytest.raises(ContractError, match=words):
        read_model_folder(folder_with(tmp_path, groups))


def test_the_kind_chooses_the_device(tmp_path: Path):
    cpu = read_model_folder(folder_with(tmp_path / "a", "instance_group { kind: KIND_CPU }"))
    assert choose_backend(cpu, Settings(model_repository=tmp_path, device="auto")) == ("onnxruntime", "cpu")
    gpu = read_model_folder(folder_with(tmp_path / "b", "instance_group { kind: KIND_GPU }"))
    with pytest.raises(ContractError, match=re.escape("config.pbtxt asks for KIND_GPU, but onnxruntime cannot reach")):
        choose_backend(gpu, Settings(model_repository=tmp_path))
