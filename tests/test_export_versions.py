"""Model versions the Triton way: a new version joins the folder beside the earlier ones, an existing one is
replaced only with --force, and whatever fails leaves the folder byte for byte as it was."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from model_helpers import OnePercentOff
from torch import nn

import niff
import niff_export.api
import niff_export.repository
from niff_contract import ContractError, parse_config, read_model_folder, sha256_file
from niff_export import ExportError, export_model
from niff_export.cli import main

SIZE = 16
LABELS = ["cat", "dog", "bird", "fish"]
NAME = "pets"


def tiny(seed: int) -> nn.Module:
    """A small NIFF ResNet; each seed gives other weights (another "training run")."""
    torch.manual_seed(seed)
    return niff.create_model(
        "resnet18_split", num_classes=len(LABELS), small_input=True, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1)
    )


def export(out: Path, version: int, seed: int | None = None, **options: object) -> niff_export.api.ExportResult:
    model = tiny(version if seed is None else seed)
    return export_model(model, SIZE, out, NAME, formats=("onnx",), labels=LABELS, version=version, **options)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder): equal snapshots, identical trees."""
    return {
        str(path.relative_to(root)): None if path.is_dir() else path.read_bytes() for path in sorted(root.rglob("*"))
    }


def policy(folder: Path) -> str:
    config = parse_config((folder / "config.pbtxt").read_text())
    return " ".join(str(config.version_policy).split())


def manifest(folder: Path) -> dict:
    return json.loads((folder / "niff.json").read_text())


def test_a_new_version_keeps_the_earlier_ones(tmp_path: Path) -> None:
    folder = export(tmp_path, 1).path
    version_1 = snapshot(folder / "1")
    result = export(tmp_path, 2)
    assert result.path == folder and result.versions == (1, 2) and result.removed_versions == ()
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "config.pbtxt", "labels.txt", "niff.json"]
    assert snapshot(folder / "1") == version_1
    meta = manifest(folder)
    assert meta["version"] == 2 and meta["artifacts"]["onnx"]["path"] == "2/model.onnx"
    assert meta["artifacts"]["onnx"]["sha256"] == sha256_file(folder / "2" / "model.onnx")
    assert sha256_file(folder / "1" / "model.onnx") != sha256_file(folder / "2" / "model.onnx")
    assert policy(folder) == "specific { versions: 1 versions: 2 }"
    assert read_model_folder(folder).version == "2"
    assert [p.name for p in tmp_path.iterdir()] == [NAME]  # no staging or old folder left behind


def _cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two checkpoints of the same architecture: two training runs."""
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for seed in (1, 2):
        paths[seed] = root / f"run{seed}.pt"
        torch.save(tiny(seed).state_dict(), paths[seed])
    return paths


def _export_cli(checkpoint: Path, out: Path, version: int, *extra: str, capsys: pytest.CaptureFixture[str]):
    args = (str(checkpoint), "--size", str(SIZE), "--out", str(out), "--name", NAME, "--format", "onnx")
    return _cli(*args, "--model-version", str(version), *extra, capsys=capsys)


def test_the_summary_names_the_versions(checkpoints: dict[int, Path], tmp_path: Path, capsys) -> None:
    assert _export_cli(checkpoints[1], tmp_path, 1, capsys=capsys)[0] == 0
    status, out, err = _export_cli(checkpoints[2], tmp_path, 2, capsys=capsys)
    assert status == 0, err
    assert (
        f"Versions in {tmp_path / NAME}: 1, 2 (Triton serves them all; niff-serve serves version 2, the one "
        "niff.json describes)"
    ) in out


def test_re_exporting_a_version_needs_force(checkpoints: dict[int, Path], tmp_path: Path, capsys) -> None:
    assert _export_cli(checkpoints[1], tmp_path, 1, capsys=capsys)[0] == 0
    assert _export_cli(checkpoints[1], tmp_path, 2, capsys=capsys)[0] == 0
    before = snapshot(tmp_path)
    status, out, err = _export_cli(checkpoints[2], tmp_path, 1, capsys=capsys)
    assert status == 1 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"niff-export: error: {tmp_path / NAME} already holds version 1; pass --force to replace it, or export "
        "another --model-version (the next is 3)"
    )
    assert snapshot(tmp_path) == before


def test_force_replaces_only_that_version(checkpoints: dict[int, Path], tmp_path: Path, capsys) -> None:
    folder = tmp_path / NAME
    assert _export_cli(checkpoints[1], tmp_path, 1, capsys=capsys)[0] == 0
    assert _export_cli(checkpoints[1], tmp_path, 2, capsys=capsys)[0] == 0
    version_1, version_2 = snapshot(folder / "1"), snapshot(folder / "2")
    status, _, err = _export_cli(checkpoints[2], tmp_path, 1, "--force", capsys=capsys)
    assert status == 0, err
    assert snapshot(folder / "2") == version_2
    assert snapshot(folder / "1") != version_1 and sorted(snapshot(folder / "1")) == ["model.onnx"]
    meta = manifest(folder)
    assert meta["version"] == 1 and meta["checkpoint"]["file"] == "run2.pt"
    assert meta["artifacts"]["onnx"]["sha256"] == sha256_file(folder / "1" / "model.onnx")
    assert policy(folder) == "specific { versions: 1 versions: 2 }"
    assert read_model_folder(folder).version == "1"
    assert [p.name for p in tmp_path.iterdir()] == [NAME]


def test_a_parity_failure_leaves_the_folder_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export(tmp_path, 1)
    export(tmp_path, 2)
    before = snapshot(tmp_path)
    monkeypatch.setattr(niff_export.api, "in_precision", lambda model, fp16: OnePercentOff(model))
    with pytest.raises(ExportError, match="parity check failed; nothing was written"):
        export(tmp_path, 3)
    with pytest.raises(ExportError, match="parity check failed; nothing was written"):
        export(tmp_path, 2, force=True, keep_versions=1)
    assert snapshot(tmp_path) == before


def test_a_failure_while_moving_in_place_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The earlier versions are linked into the staged folder last: a failure there changes nothing either."""
    export(tmp_path, 1)
    export(tmp_path, 2)
    before = snapshot(tmp_path)

    def broken_link(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(niff_export.repository, "_link_or_copy", broken_link)
    with pytest.raises(
        ExportError, match=re.escape(f"cannot keep the other versions of {tmp_path / NAME}: No space left")
    ):
        export(tmp_path, 3)
    assert snapshot(tmp_path) == before


def test_keep_versions_keeps_the_latest_and_says_so(tmp_path: Path) -> None:
    folder = export(tmp_path, 1).path
    export(tmp_path, 2)
    version_2 = snapshot(folder / "2")
    result = export(tmp_path, 3, keep_versions=2)
    assert result.versions == (2, 3) and result.removed_versions == (1,)
    assert sorted(p.name for p in folder.iterdir()) == ["2", "3", "config.pbtxt", "labels.txt", "niff.json"]
    assert snapshot(folder / "2") == version_2
    assert policy(folder) == "latest { num_versions: 2 }"
    assert read_model_folder(folder).version == "3"
    before = snapshot(tmp_path)
    with pytest.raises(ExportError, match=r"--keep-versions 1 keeps the latest versions \[3\] of .*, not version 2"):
        export(tmp_path, 2, force=True, keep_versions=1)
    assert snapshot(tmp_path) == before


def test_a_version_must_fit_the_folder_it_joins(tmp_path: Path) -> None:
    folder = export(tmp_path, 1).path
    before = snapshot(tmp_path)
    other_size = tiny(2)
    with pytest.raises(ExportError) as refused:
        export_model(other_size, 24, tmp_path, NAME, formats=("onnx",), labels=LABELS, version=2)
    assert str(refused.value) == (
        f"version 2 does not fit the version 1 in {folder}: input shape [3, 24, 24] (the folder's: [3, 16, 16]); "
        "all versions of a model folder share its config.pbtxt, labels and preprocessing: export under another "
        "--name, or pass --keep-versions 1 to replace the other versions"
    )
    with pytest.raises(ExportError, match=r"does not fit the version 1 in .*: other labels; other preprocessing"):
        export_model(
            tiny(2),
            SIZE,
            tmp_path,
            NAME,
            formats=("onnx",),
            labels=LABELS[::-1],
            version=2,
            preprocessing={"std": (1,) * 3},
        )
    with pytest.raises(ExportError, match=r"platform pytorch_libtorch \(the folder's: onnxruntime_onnx\)"):
        export_model(tiny(2), SIZE, tmp_path, NAME, formats=("torchscript",), labels=LABELS, version=2)
    assert snapshot(tmp_path) == before
    result = export_model(other_size, 24, tmp_path, NAME, formats=("onnx",), labels=LABELS, version=2, keep_versions=1)
    assert result.versions == (2,) and result.removed_versions == (1,)
    assert read_model_folder(folder).input_size == 24


def test_a_folder_is_read_as_the_version_niff_json_describes(tmp_path: Path) -> None:
    """The policy must serve niff.json's version; listed versions that are absent do not matter."""
    folder = export(tmp_path, 1).path
    version_1_manifest = (folder / "niff.json").read_text()
    export(tmp_path, 2)
    # Rolling back by putting version 1's niff.json back: it still fits 1/, labels.txt and config.pbtxt.
    (folder / "niff.json").write_text(version_1_manifest)
    assert read_model_folder(folder).version == "1"
    shutil.rmtree(folder / "1")
    with pytest.raises(ContractError, match=re.escape("'1/model.onnx' is missing")):
        read_model_folder(folder)
    export(tmp_path, 2, force=True)
    assert read_model_folder(folder).version == "2"  # config.pbtxt lists only 2 now; a listed absent 1 is fine too
    config = (folder / "config.pbtxt").read_text()
    (folder / "config.pbtxt").write_text(config.replace("versions: 2", "versions: 1\n    versions: 2"))
    assert read_model_folder(folder).version == "2"
    (folder / "config.pbtxt").write_text(config.replace("versions: 2", "versions: 3"))
    with pytest.raises(ContractError, match=r"version_policy serves versions \[3\], not version 2 of niff.json"):
        read_model_folder(folder)
    (folder / "3").mkdir()
    latest = config.replace("specific {\n    versions: 2\n  }", "latest {\n    num_versions: 1\n  }")
    assert latest != config
    (folder / "config.pbtxt").write_text(latest)
    with pytest.raises(ContractError, match=r"serves the latest 1 of versions \[2, 3\], not version 2 of niff.json"):
        read_model_folder(folder)
    (folder / "config.pbtxt").write_text(latest.replace("num_versions: 1", "num_versions: 2"))
    assert read_model_folder(folder).version == "2"
