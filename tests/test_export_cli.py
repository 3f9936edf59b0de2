"""``niff-export`` as a user runs it: the happy path, --help, and every user mistake as a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from model_helpers import zoo_model

SMALL = 32


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "niff_export.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "cifar_resnet.pth"
    model = zoo_model("resnet18_split", SMALL)
    torch.save({"model": model.state_dict(), "epoch": 90}, path)
    return path


def test_exports_a_checkpoint(checkpoint, tmp_path):
    done = run(str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), "--name", "cifar")
    assert done.returncode == 0, done.stderr
    assert "[1/5] Loading checkpoint" in done.stderr and "[5/5] Checking parity" in done.stderr
    assert "Exported cifar (resnet18_split, 10 classes)" in done.stdout
    assert "onnx (fp32)" in done.stdout and "ok" in done.stdout
    meta = json.loads((tmp_path / "cifar" / "niff.json").read_text())
    assert meta["checkpoint"]["file"] == "cifar_resnet.pth"
    assert {p.name for p in (tmp_path / "cifar" / "1").iterdir()} == {"model.onnx", "model.pt"}


def test_tune_adds_a_stage_and_reports_the_choices(checkpoint, tmp_path):
    done = run(str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), "--format", "onnx", "--tune")
    assert done.returncode == 0, done.stderr
    assert "[3/5] Tuning the spectral layers for onnx" in done.stderr and "[5/5] Checking parity" in done.stderr
    layers = json.loads((tmp_path / "resnet18_split" / "niff.json").read_text())["artifacts"]["onnx"]["spectral_layers"]
    counts = {name: sum(layer["lowering"] == name for layer in layers) for name in ("kronecker", "separable")}
    shown = ", ".join(f"{count} {name}" for name, count in counts.items() if count)
    assert f"onnx, matmul lowering ({shown})" in done.stdout


def test_help_explains_every_option():
    done = run("--help")
    assert done.returncode == 0
    for option in (
        "--size",
        "--arch",
        "--num-classes",
        "--name",
        "--out",
        "--format",
        "--fft",
        "--fp16",
        "--labels",
        "--opset",
        "--trust-pickle",
        "--ema",
        "--max-batch-size",
        "--tune",
    ):
        assert option in done.stdout
    assert "resnet50_split" in done.stdout and "matmul" in done.stdout


def _fails(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--arch", "resnet19_split"], "unknown model 'resnet19_split'"),
        (["--arch", "resnet34_split"], "does not fit resnet34_split"),
        (["--num-classes", "1000"], "num_classes=1000 but the checkpoint's classifier head has 10"),
        (["--size", "32x48"], "square inputs only"),
        (["--size", "abc"], "expected a side length"),
        (["--size", "4"], "at least 8"),
        (["--format", "tflite"], "unknown format tflite"),
        (["--fft", "dft", "--opset", "18"], "DFT op needs opset >= 20"),
        (["--fft", "cufft"], "invalid choice"),
        (["--name", "../escape"], "invalid model name"),
    ],
    ids=[
        "unknown-arch",
        "wrong-arch",
        "num-classes",
        "non-square",
        "garbage-size",
        "too-small",
        "format",
        "dft-opset",
        "fft-choice",
        "bad-name",
    ],
)
def test_user_mistakes(checkpoint, tmp_path, extra, message):
    args = [str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), *extra]
    if "--size" in extra:
        args = [str(checkpoint), "--out", str(tmp_path), *extra]
    _fails(run(*args), message)
    assert not any(tmp_path.iterdir())


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    _fails(run(str(bad), "--size", "32", "--out", str(tmp_path / "out")), "not a readable PyTorch checkpoint")
    _fails(run(str(tmp_path / "absent.pt"), "--size", "32"), "no such checkpoint file")


def test_unwritable_out_dir(checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    _fails(run(str(checkpoint), "--size", str(SMALL), "--out", str(blocker / "models")), "cannot write to")


def test_labels_must_match_classes(checkpoint, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    _fails(
        run(str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path / "out"), "--labels", str(labels)),
        "2 labels given for a model with 10 classes",
    )


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(zoo_model("resnet18_split", SMALL), path)
    _fails(run(str(path), "--size", str(SMALL), "--out", str(tmp_path / "out")), "--trust-pickle")


def test_refuses_to_overwrite_a_foreign_folder(checkpoint, tmp_path):
    (tmp_path / "resnet18_split").mkdir()
    (tmp_path / "resnet18_split" / "notes.txt").write_text("mine")
    _fails(run(str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path)), "is not a model folder")
    assert (tmp_path / "resnet18_split" / "notes.txt").read_text() == "mine"
