"""``niff-export`` as a user runs it: the happy path, --help, and every user mistake as a clear error."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
from model_helpers import zoo_model
from torch import nn

from niff import digits
from niff_export import ExportError, ExportOptions, export_model
from niff_export.cli import build_parser, main
from niff_export.cli_common import record_from_args
from niff_export.evaluate_cli import main as eval_main
from niff_export.options import OPTION_KEY, Option, default_of, flag_of, shown
from niff_export.report.cli import main as report_main
from niff_export.tuning import candidates

SMALL = 32
DIGITS = str(digits.DEFAULT_CHECKPOINT)  # the shipped checkpoint, with preprocessing metadata
PROGRESS_LINE = re.compile(r"\[\d/\d\] .+ … \d+\.\d s")


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
    assert done.stderr.splitlines()[1] == (
        "Preprocessing: input 32x32, resize 36, crop_pct 0.875, bilinear interpolation, mean 0.485,0.456,0.406, "
        "std 0.229,0.224,0.225 (ImageNet defaults: the checkpoint has no preprocessing metadata; if it was trained "
        "with others, pass --crop-pct, --interpolation, --mean, --std)"
    )
    assert "onnx (fp32)" in done.stdout and "ok" in done.stdout
    meta = json.loads((tmp_path / "cifar" / "niff.json").read_text())
    assert meta["checkpoint"]["file"] == "cifar_resnet.pth"
    assert {p.name for p in (tmp_path / "cifar" / "1").iterdir()} == {"model.onnx", "model.pt"}


def test_tune_adds_a_stage_and_reports_the_choices(checkpoint, tmp_path):
    done = run(str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), "--format", "onnx", "--tune")
    assert done.returncode == 0, done.stderr
    assert "[3/5] Tuning the spectral layers for onnx" in done.stderr and "[5/5] Checking parity" in done.stderr
    record = json.loads((tmp_path / "resnet18_split" / "niff.json").read_text())["artifacts"]["onnx"]
    assert record["tuning"]["batch"] == 8 and record["tuning"]["runtime"].startswith("onnxruntime ")
    layers = record["spectral_layers"]
    assert all(set(layer["timings_ms"]) == set(candidates("onnx", "matmul", layer["map_size"])) for layer in layers)
    counts = Counter(layer["lowering"] for layer in layers)
    shown = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    assert f"onnx, matmul lowering ({shown})" in done.stdout


def main_(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``niff-export ARGS`` in-process: exit status, stdout, stderr."""
    try:
        status = main(list(args))
    except SystemExit as exit_:  # argparse: --help, --version, usage errors
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_help_explains_every_option(capsys):
    status, out, _ = main_("--help", capsys=capsys)
    assert status == 0
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
        "--model-version",
        "--force",
        "--keep-versions",
        "--version",
        "--tune",
    ):
        assert option in out
    assert "resnet50_split" in out and "matmul" in out


def test_version_names_the_libraries_it_exports_with(capsys):
    status, out, _ = main_("--version", capsys=capsys)
    assert status == 0
    pattern = r"niff-export \S+ \(torch \S+, onnx \S+, onnxscript \S+, onnxruntime \S+(, openvino \S+)?\)\n"
    assert re.fullmatch(pattern, out), out


def _fails(result: tuple[int, str, str], message: str, status: int | None = None) -> str:
    code, _, err = result
    assert code != 0 and (status is None or code == status)
    assert message in err, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--arch", "resnet19_split"], "unknown model 'resnet19_split'"),
        (["--arch", "resnet34_split"], "does not fit resnet34_split"),
        (["--num-classes", "1000"], "num_classes=1000 but the checkpoint's classifier head has 10"),
        (["--format", "tflite"], "unknown format tflite"),
        (["--fft", "dft", "--opset", "18"], "DFT op needs opset >= 20"),
        (["--fft", "cufft"], "invalid choice"),
        (["--name", "../escape"], "invalid model name"),
    ],
    ids=["unknown-arch", "wrong-arch", "num-classes", "format", "dft-opset", "fft-choice", "bad-name"],
)
def test_user_mistakes(checkpoint, tmp_path, capsys, extra, message):
    _fails(main_(str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), *extra, capsys=capsys), message)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "size, message",
    [
        ("32x48", "square inputs only"),
        ("abc", "expected a side length"),
        ("4", "at least 8 pixels, got 4"),
        ("0", "at least 8 pixels, got 0"),
        ("-5", "at least 8 pixels, got -5"),
    ],
)
def test_size_is_checked_before_the_checkpoint_is_read(tmp_path, capsys, size, message):
    """One check, in argparse, for every bad size; a missing checkpoint is not even looked at."""
    err = _fails(main_(str(tmp_path / "absent.pt"), "--size", size, capsys=capsys), message, status=2)
    assert err.startswith("usage: niff-export") and "absent.pt" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"epoch,loss\n1,0.5\n", "is not a PyTorch checkpoint: torch.save writes a zip archive"),
        (b"", "is empty, not a PyTorch checkpoint"),
        (bytes(range(7, 256)) * 40, "is not a PyTorch checkpoint"),
        (b"\x80\x02" + bytes(range(7, 256)) * 40, "is not a readable PyTorch checkpoint: Unsupported operand"),
        (b"PK\x03\x04garbage-zip", "is not a readable PyTorch checkpoint: PytorchStreamReader failed"),
    ],
    ids=["text-renamed-pth", "empty", "random-bytes", "pickle-garbage", "corrupt-zip"],
)
def test_files_that_are_not_checkpoints(tmp_path, capsys, content, message):
    bad = tmp_path / "model.pth"
    bad.write_bytes(content)
    err = _fails(main_(str(bad), "--size", "32", "--out", str(tmp_path / "out"), capsys=capsys), message, status=1)
    assert err.strip().splitlines()[0] == "[1/5] Loading checkpoint …" and len(err.strip().splitlines()) == 2
    assert "weights_only" not in err and "pop from empty list" not in err


def test_unrecognised_keys_ask_for_the_arch_option(tmp_path, capsys):
    path = tmp_path / "other.pt"
    # NIFF filter weights in a layout no zoo architecture has: the architecture must be named.
    keys = {"encoder.mlp_real.layer_mpl1.weight": torch.zeros(8, 2, 1, 1), "decoder.weight": torch.zeros(3, 3)}
    torch.save(keys, path)
    err = _fails(main_(str(path), "--size", "32", "--out", str(tmp_path / "out"), capsys=capsys), "pass --arch NAME")
    assert "cannot tell the architecture from the checkpoint's keys" in err and "arch=" not in err


def test_missing_file(tmp_path, capsys):
    _fails(main_(str(tmp_path / "absent.pt"), "--size", "32", capsys=capsys), "no such checkpoint file", status=1)


def test_unwritable_out_dir(checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    _fails(
        main_(str(checkpoint), "--size", str(SMALL), "--out", str(blocker / "models"), capsys=capsys), "cannot write to"
    )


def test_labels_must_match_classes(checkpoint, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    args = (str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path / "out"), "--labels", str(labels))
    _fails(main_(*args, capsys=capsys), "2 labels given for a model with 10 classes")


def test_pickled_module_needs_trust(tmp_path, capsys):
    path = tmp_path / "whole.pt"
    torch.save(zoo_model("resnet18_split", SMALL), path)
    err = _fails(
        main_(str(path), "--size", str(SMALL), "--out", str(tmp_path / "out"), capsys=capsys), "--trust-pickle"
    )
    assert "holds pickled Python objects (niff.models.resnet.ResNet)" in err and "trust_pickle=" not in err


def test_refuses_to_overwrite_a_foreign_folder(checkpoint, tmp_path, capsys):
    (tmp_path / "resnet18_split").mkdir()
    (tmp_path / "resnet18_split" / "notes.txt").write_text("mine")
    _fails(main_(str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), capsys=capsys), "is not a model folder")
    assert (tmp_path / "resnet18_split" / "notes.txt").read_text() == "mine"


def test_an_error_from_the_real_process_is_one_line_and_status_1(tmp_path):
    """The console entry point end to end (the other error cases run in-process through main)."""
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    done = run(str(bad), "--size", "32", "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        f"niff-export: error: {bad} is not a PyTorch checkpoint: torch.save writes a zip archive (or a pickle in "
        "its legacy format), and this file is neither"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "metadata, extra, said",
    [
        (None, [], "input 32x32, resize 32, crop_pct 1, bilinear interpolation, mean 0.69495,0.69495,0.69495, "),
        (None, [], "(from the checkpoint)"),
        (
            {"mean": [0.5] * 3, "std": [0.25] * 3},
            ["--interpolation", "bicubic"],
            "input 32x32, resize 36, crop_pct 0.875, bicubic interpolation, mean 0.5,0.5,0.5, std 0.25,0.25,0.25 "
            "(crop_pct is the ImageNet default: the checkpoint's preprocessing metadata does not set it; if it was "
            "trained with others, pass --crop-pct)",
        ),
        (
            {},
            ["--crop-pct", "1", "--interpolation", "bicubic", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"],
            "input 32x32, resize 32, crop_pct 1, bicubic interpolation, mean 0.5,0.5,0.5, std 0.5,0.5,0.5 "
            "(from the options)",
        ),
    ],
    ids=["checkpoint-values", "checkpoint", "partial-metadata", "options"],
)
def test_the_preprocessing_is_said_with_where_it_comes_from(tmp_path, capsys, metadata, extra, said):
    checkpoint = DIGITS
    if metadata is not None:  # the digits weights with other metadata ({}: none)
        checkpoint = str(tmp_path / "digits.pt")
        stored = torch.load(DIGITS, weights_only=True)
        torch.save(
            {"model": stored["model"], **({"niff": {"preprocessing": metadata}} if metadata else {})}, checkpoint
        )
    status, _, err = main_(
        checkpoint, "--size", "32", "--out", str(tmp_path / "out"), "--format", "onnx", *extra, capsys=capsys
    )
    assert status == 0, err
    [line] = [line for line in err.splitlines() if line.startswith("Preprocessing: ")]
    assert said in line
    assert err.splitlines().index(line) == 1  # right after loading, before the export's long stages


def test_an_exported_torchscript_model_is_not_a_checkpoint(tmp_path, capsys, recwarn):
    path = tmp_path / "model.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(path))  # what niff-export writes as 1/model.pt
    recwarn.clear()
    err = _fails(main_(str(path), "--size", "32", "--out", str(tmp_path / "out"), capsys=capsys), "", status=1)
    assert (
        err.splitlines()[-1]
        == f"niff-export: error: {path} is an exported TorchScript model, not a training checkpoint"
    )
    assert len(err.splitlines()) == 2 and "weights_only" not in err
    assert not [str(w.message) for w in recwarn if "TorchScript" in str(w.message)]


def test_a_directory_is_not_a_checkpoint_file(tmp_path, capsys):
    err = _fails(main_(str(tmp_path), "--size", "32", "--out", str(tmp_path / "out"), capsys=capsys), "", status=1)
    assert err.splitlines()[-1] == f"niff-export: error: {tmp_path} is a directory, not a checkpoint file"


def test_ema_without_ema_weights_names_the_option(tmp_path, capsys):
    err = _fails(main_(DIGITS, "--size", "32", "--out", str(tmp_path), "--ema", capsys=capsys), "", status=1)
    assert err.splitlines()[-1] == (
        "niff-export: error: the checkpoint has no EMA weights (looked for model_ema, state_dict_ema, ema); "
        "leave out --ema for its model weights"
    )


def test_the_dft_lowering_leaves_the_progress_lines_clean(checkpoint, tmp_path):
    """The dynamo exporter logs warnings (torchvision is not installed ...) once per process: a real process."""
    done = run(str(checkpoint), "--size", str(SMALL), "--out", str(tmp_path), "--format", "onnx", "--fft", "dft")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[1].startswith("Preprocessing: ")
    assert all(PROGRESS_LINE.fullmatch(line) for line in lines[:1] + lines[2:]), done.stderr


def _option_leaves(record: type, prefix: str = "") -> dict[str, tuple[str, Option, object]]:
    """Every option an option record declares, by the parser destination it should have: (flag, spec, default)."""
    leaves = {}
    for item in dataclasses.fields(record):
        assert OPTION_KEY in item.metadata, f"{record.__name__}.{item.name} declares no command-line option"
        spec, dest = item.metadata[OPTION_KEY], prefix + item.name
        if spec.record is not None:
            leaves.update(_option_leaves(spec.record, dest + "."))
        elif spec.keys:
            leaves.update({f"{dest}.{key}": (flag_of(key, sub), sub, None) for key, sub in spec.keys})
        else:
            leaves[dest] = (flag_of(item.name, spec), spec, default_of(item))
    return leaves


def test_every_export_option_is_generated_from_the_options_record():
    """One option per ExportOptions field (and per CompactRequest field and preprocessing key), with the
    record's help, default and choices, and no option of its own beside them but the checkpoint's and
    export_model's arguments."""
    actions = [a for a in build_parser()._actions if a.dest != "help"]
    by_dest = Counter(action.dest for action in actions)
    leaves = _option_leaves(ExportOptions)
    for dest, (flag, spec, default) in leaves.items():
        assert by_dest[dest] == 1, dest
        [action] = [a for a in actions if a.dest == dest]
        assert action.option_strings == [flag]
        assert action.help == spec.help.replace("{default}", shown(default))
        assert action.choices == spec.choices
        assert action.default is argparse.SUPPRESS  # an option left out takes the record's default
    others = {"checkpoint", "size", "arch", "num_classes", "ema", "trust_pickle", "name", "out", "program_version"}
    assert set(by_dest) - set(leaves) == others
    assert record_from_args(ExportOptions, build_parser().parse_args(["ckpt.pt", "--size", "32"])) == ExportOptions()


def test_the_options_record_checks_what_the_command_line_checks():
    with pytest.raises(ExportError, match="--max-batch-size must be positive, got 0"):
        ExportOptions(max_batch_size=0)
    with pytest.raises(ExportError, match="--format has unknown format tflite; choose from onnx, torchscript"):
        ExportOptions(formats=("tflite",))
    with pytest.raises(ExportError, match="unknown --fft 'cufft'; choose one of matmul, dft, torch"):
        ExportOptions(fft="cufft")
    with pytest.raises(TypeError, match="not both"):
        export_model(nn.Identity(), SMALL, "unused", options=ExportOptions(), fp16=True)


@pytest.mark.parametrize("case", ["missing", "folder"])
def test_the_three_commands_refuse_a_missing_checkpoint_and_a_folder_alike(tmp_path, capsys, case):
    """One error line each, no traceback, each command's error status; niff-export and niff-report word it
    the same (niff-eval also takes model folders, so it says what it looked for)."""
    path = tmp_path / "absent.pt" if case == "missing" else tmp_path
    out = str(tmp_path / "out")
    commands = {
        "niff-export": (main, [str(path), "--size", "32", "--out", out], 1),
        "niff-report": (report_main, [str(path), "--size", "32", "--out", out], 1),
        "niff-eval": (eval_main, [str(path), "--size", "32", "--images", str(tmp_path)], 2),
    }
    messages = {}
    for prog, (command, args, status) in commands.items():
        assert command(args) == status, prog
        err = capsys.readouterr().err
        [line] = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
        assert err.splitlines()[-1] == line and "Traceback" not in err
        messages[prog] = line.removeprefix(f"{prog}: error: ")
    expected = (
        f"no such checkpoint file: {path}" if case == "missing" else f"{path} is a directory, not a checkpoint file"
    )
    assert messages["niff-export"] == messages["niff-report"] == expected
    assert str(path) in messages["niff-eval"]
    assert not (tmp_path / "out").exists()
