"""Hardening of the model-folder contract: the labels file is hashed like the artifacts, and a hostile or
mixed-up folder (unparseable niff.json or config.pbtxt, another model's ONNX file with its hash updated)
is one line, never a traceback.

One tiny model is exported per session (ONNX only); the "other model" ONNX files are small graphs built
with onnx.helper, so each mismatch (input size, class count, tensor names) is exactly the one wanted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import niff
import niff_export
from niff_contract import ContractError, parse_config, read_model_folder, scan_repository, sha256_file
from niff_serve.core.backends import load_backend, warm_up
from niff_serve.core.errors import ConfigurationError
from niff_serve.core.settings import Settings

NAME = "tiny"
SIZE = 32
LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real export: a narrow ResNet-18 split, 10 classes, 32x32, ONNX only."""
    torch.manual_seed(0)
    model = niff.create_model(
        "resnet18_split", num_classes=len(LABELS), small_input=True, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1)
    )
    out = tmp_path_factory.mktemp("exported")
    return niff_export.export_model(model, SIZE, out, NAME, formats=("onnx",), labels=LABELS).path


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    """A fresh copy of the export, alone in a model repository, to damage."""
    return Path(shutil.copytree(exported, tmp_path / "repo" / NAME))


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "niff.json").read_text())


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "niff.json").write_text(json.dumps(manifest))


def one_line_error(folder: Path) -> str:
    """read_model_folder's ContractError for ``folder``, checked to be one line naming the folder."""
    with pytest.raises(ContractError) as error:
        read_model_folder(folder)
    message = str(error.value)
    assert "\n" not in message and "\r" not in message and message.isprintable(), message
    assert message.startswith(f"model folder {str(folder)!r}: "), message
    return message


def serve(repository: Path) -> subprocess.CompletedProcess[str]:
    """``python -m niff_serve`` (the niff-serve entry point) on a free port, gRPC off, until it exits."""
    command = [sys.executable, "-m", "niff_serve", "--model-repository", str(repository)]
    command += ["--port", str(free_port()), "--grpc-port", "0", "--workers", "1", "--backend", "onnxruntime"]
    command += ["--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIFF_")}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)


# Item A: labels.txt carries a sha256 like every other file.


def test_the_export_records_the_labels_files_sha256(exported: Path) -> None:
    recorded = manifest_of(exported)["labels_sha256"]
    assert recorded == sha256_file(exported / "labels.txt")
    assert recorded == hashlib.sha256("".join(f"{label}\n" for label in LABELS).encode()).hexdigest()
    folder = read_model_folder(exported)
    assert folder.manifest.labels_sha256 == recorded and folder.labels == tuple(LABELS)


def test_labels_changed_after_export_are_refused_in_one_line(folder: Path) -> None:
    """The case that made two worker processes answer "2" and "two" for one image."""
    recorded = manifest_of(folder)["labels_sha256"]
    (folder / "labels.txt").write_text("".join(f"{i}\n" for i in range(len(LABELS))))
    message = one_line_error(folder)
    found = sha256_file(folder / "labels.txt")
    assert "labels.txt changed after export" in message
    assert recorded in message and found in message
    with pytest.raises(ContractError, match="changed after export"):
        scan_repository(folder.parent)


def test_a_folder_without_the_labels_hash_still_loads(folder: Path) -> None:
    """Folders of earlier exporters have no labels_sha256: read as they are (and their labels unchecked)."""
    manifest = manifest_of(folder)
    del manifest["labels_sha256"]
    write_manifest(folder, manifest)
    (folder / "labels.txt").write_text("".join(f"{i}\n" for i in range(len(LABELS))))
    read = read_model_folder(folder)
    assert read.manifest.labels_sha256 is None and read.labels[2] == "2"


def test_a_malformed_labels_hash_is_refused(folder: Path) -> None:
    manifest = manifest_of(folder)
    manifest["labels_sha256"] = "not a hash"
    write_manifest(folder, manifest)
    assert "niff.json: labels_sha256: String should match pattern" in one_line_error(folder)


# Item B (1): every way niff.json, config.pbtxt or labels fail to parse is one line.

NESTED = "[" * 100_000

Damage = Callable[[Path], None]


def raw(name: str, data: bytes) -> Damage:
    return lambda folder: (folder / name).write_bytes(data)


def edit(**changes: object) -> Damage:
    def damage(folder: Path) -> None:
        manifest = manifest_of(folder)
        manifest.update(changes)
        write_manifest(folder, manifest)

    return damage


def onnx_path(value: str) -> Damage:
    def damage(folder: Path) -> None:
        manifest = manifest_of(folder)
        manifest["artifacts"]["onnx"]["path"] = value
        write_manifest(folder, manifest)

    return damage


def symlink_loop(name: str) -> Damage:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        os.symlink(name, folder / name)

    return damage


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (raw("niff.json", NESTED.encode()), "niff.json is nested too deeply to read"),
        (raw("niff.json", b'{"a": ' * 100_000), "niff.json is nested too deeply to read"),
        (raw("niff.json", b"1" * 5000), "niff.json cannot be read: Exceeds the limit"),
        (raw("niff.json", b"\xff\xfe{}"), "niff.json is not UTF-8 text"),
        (raw("niff.json", b'{"a": NaN, '), "niff.json is not JSON"),
        (edit(**{"bad\nkey": 1}), "niff.json: bad\\nkey: Extra inputs are not permitted"),
        (edit(**{f"k{i}": i for i in range(50)}), "; and 40 more"),
        (edit(**{"k" * 5000: 1}), "Extra inputs are not permitted"),
        (edit(labels_file="labels\x00.txt"), "'labels\\x00.txt' must be a relative path inside the model folder"),
        (onnx_path("."), "artifacts.onnx.path '.' is not in the folder of version 1"),
        (onnx_path("1/model\x00.onnx"), "must be a relative path inside the model folder"),
        (symlink_loop("labels.txt"), "labels.txt"),
        (symlink_loop("niff.json"), "niff.json"),
        (raw("labels.txt", b"\xff\n" * len(LABELS)), "labels.txt is not UTF-8 text"),
        (raw("config.pbtxt", b"input {" * 100_000), "config.pbtxt is not a Triton model configuration"),
        (raw("config.pbtxt", b'name: "\\xZZ"'), "config.pbtxt is not a Triton model configuration"),
        (raw("config.pbtxt", b'name: "\\377"'), "config.pbtxt is not a Triton model configuration"),
        (raw("config.pbtxt", b"max_batch_size: " + b"9" * 100_000), "config.pbtxt is not a Triton model config"),
    ],
    ids=[
        "nested-arrays",
        "nested-objects",
        "5000-digit-number",
        "utf16-json",
        "truncated-json",
        "newline-in-key",
        "50-unknown-keys",
        "5000-char-key",
        "nul-in-labels-path",
        "dot-artifact-path",
        "nul-in-artifact-path",
        "labels-symlink-loop",
        "niff-json-symlink-loop",
        "labels-not-utf8",
        "config-nested",
        "config-bad-escape",
        "config-bad-utf8-escape",
        "config-100000-digit-number",
    ],
)
def test_hostile_files_are_one_line_contract_errors(folder: Path, damage: Damage, message: str) -> None:
    damage(folder)
    error = one_line_error(folder)
    assert message in error
    assert len(error) <= 1000


def test_parse_config_turns_any_parser_failure_into_one_line() -> None:
    with pytest.raises(ContractError) as error:
        parse_config('name: "\\xZZ"\n' + "x" * 10_000)
    assert "\n" not in str(error.value) and len(str(error.value)) < 500


def test_nested_brackets_stop_niff_serve_with_one_line_and_status_2(folder: Path) -> None:
    (folder / "niff.json").write_text(NESTED)
    result = serve(folder.parent)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"niff-serve: error: model folder {str(folder)!r}: niff.json is nested too deeply to read "
        "(arrays or objects inside each other)"
    ]
    assert "Traceback" not in result.stdout + result.stderr


# Item B (2): another model's ONNX file, its sha256 updated in niff.json, is one clear line.


def foreign_onnx(
    path: Path, size: int = SIZE, classes: int = len(LABELS), names: tuple[str, str] = ("input", "logits")
) -> None:
    """A small valid ONNX classifier (global average pool, then a linear layer) with a dynamic batch axis."""
    weight = numpy_helper.from_array(np.ones((3, classes), np.float32), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [names[0]], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weight"], [names[1]]),
        ],
        "foreign",
        [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info(names[1], TensorProto.FLOAT, ["batch", classes])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def replace_onnx(folder: Path, **graph: object) -> None:
    """Put another model's model.onnx in ``folder`` and update its sha256, so the hash check passes."""
    foreign_onnx(folder / "1" / "model.onnx", **graph)  # type: ignore[arg-type]
    manifest = manifest_of(folder)
    manifest["artifacts"]["onnx"]["sha256"] = sha256_file(folder / "1" / "model.onnx")
    write_manifest(folder, manifest)


def load(folder: Path) -> None:
    settings = Settings(model_repository=folder.parent, backend="onnxruntime", device="cpu", backend_threads=1)
    model = read_model_folder(folder)
    warm_up(load_backend(model, settings, model.max_batch_size), model, model.max_batch_size, runs=1)


def test_the_exported_onnx_file_passes_the_graph_check(exported: Path) -> None:
    load(exported)


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (
            {"size": 24},
            "model 'tiny': model.onnx takes input 'input' as float32 [batch, 3, 24, 24], but niff.json says "
            "float32 [N, 3, 32, 32]: is the file from another model?",
        ),
        (
            {"classes": 4},
            "model 'tiny': model.onnx returns output 'logits' as float32 [batch, 4], but niff.json says "
            "float32 [N, 10]: is the file from another model?",
        ),
        (
            {"names": ("x", "y")},
            "model 'tiny': model.onnx: graph inputs ['x'] / outputs ['y'] lack 'input' / 'logits' (niff.json's names)",
        ),
    ],
)
def test_another_models_onnx_file_is_one_clear_line(folder: Path, graph: dict, message: str) -> None:
    replace_onnx(folder, **graph)
    read_model_folder(folder)  # the folder itself is consistent: the hash matches
    with pytest.raises(ConfigurationError) as error:
        load(folder)
    assert str(error.value) == message


def test_another_models_onnx_file_stops_niff_serve_with_one_line(folder: Path) -> None:
    replace_onnx(folder, size=24)
    result = serve(folder.parent)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line == (
        "niff-serve: error: start-up failed: model 'tiny': model.onnx takes input 'input' as float32 "
        "[batch, 3, 24, 24], but niff.json says float32 [N, 3, 32, 32]: is the file from another model?"
    )
    assert "Traceback" not in result.stdout + result.stderr
