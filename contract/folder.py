"""Reading a model folder as a sandbox: every file it names resolves inside it, is a regular file, and
is read within a size limit; every artifact has a sha256 that is checked before it is loaded, and the
labels file's sha256 (when niff.json records one) is checked when the folder is read.

A model folder may come from anywhere (a volume, an init container, a download), so nothing in it is
trusted: ``labels_file: /dev/zero``, ``../../secret`` or a symlink out of the folder is a start-up
error naming the folder and the file, not something the server reads or serves. However a file fails
to parse (bad UTF-8, JSON nested 100,000 deep, a 5,000-digit number, protobuf text errors), the error
is a ContractError of one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from niff_contract.errors import MAX_DETAIL, ContractError, one_line
from niff_contract.schema import REPORT_DIR, ArtifactKind, Manifest, check_model_name, parse_manifest
from niff_contract.triton_config import ModelConfig, check_config, parse_config

CONFIG_FILE = "config.pbtxt"
MANIFEST_FILE = "niff.json"
MAX_MANIFEST_BYTES = 1 << 20
MAX_CONFIG_BYTES = 1 << 20
MAX_LABELS_BYTES = 16 << 20
MAX_REPORT_FILE_BYTES = 64 << 20
MAX_MESSAGE = 1000  # a folder's error message is cut to this many characters
_VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")  # a version folder's name (Triton's: an int64 without leading 0)


@dataclass(frozen=True)
class ModelFolder:
    """One validated model folder: what to load and how to feed it."""

    name: str
    path: Path
    manifest: Manifest
    config: ModelConfig
    labels: tuple[str, ...]

    @property
    def version(self) -> str:
        return str(self.manifest.version)

    @property
    def input_size(self) -> int:
        return self.manifest.preprocessing.input_size

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def max_batch_delay_s(self) -> float:
        """Triton's ``dynamic_batching.max_queue_delay_microseconds``; 0 without dynamic batching."""
        return self.config.dynamic_batching.max_queue_delay_microseconds / 1e6

    def artifact_path(self, kind: ArtifactKind) -> Path | None:
        """The artifact file of this kind (already checked to be inside the folder), or None."""
        record = self.manifest.artifacts.get(kind)
        return None if record is None else inside(self.path, record.path)

    def report_file(self, filename: str) -> bytes:
        """One file of the kernel report in ``report/``, after checking its sha256 (the folder may have
        changed since start-up); ContractError when niff.json lists no such file."""
        record = self.manifest.report
        if record is None or filename not in record.files:
            raise ContractError(f"model {self.name!r} has no report file {filename!r}")
        data = read_bytes(self.path, f"{REPORT_DIR}/{filename}", MAX_REPORT_FILE_BYTES)
        if hashlib.sha256(data).hexdigest() != record.files[filename]:
            raise ContractError(f"model {self.name!r}: {REPORT_DIR}/{filename} does not match its sha256 in niff.json")
        return data

    def verify_artifact(self, kind: ArtifactKind) -> Path:
        """The artifact's path after checking its sha256."""
        path = self.artifact_path(kind)
        record = self.manifest.artifacts.get(kind)
        if path is None or record is None:
            raise ContractError(f"model {self.name!r}: niff.json lists no {kind} artifact")
        if sha256_file(path) != record.sha256:
            raise ContractError(f"model {self.name!r}: {record.path} does not match its sha256 in niff.json")
        return path


def scan_repository(root: Path) -> list[ModelFolder]:
    """Every model folder under ``root``, validated; any unusable folder is an error, not a skip."""
    if not root.is_dir():
        raise ContractError(f"model repository {str(root)!r} is not a directory")
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise ContractError(f"model repository {str(root)!r} cannot be listed: {exc.strerror or exc}") from None
    if not folders:
        raise ContractError(f"model repository {str(root)!r} holds no model folders")
    return [read_model_folder(folder) for folder in folders]


def read_model_folder(path: Path) -> ModelFolder:
    """Read and cross-check ``niff.json``, ``config.pbtxt``, the labels file and the artifact files.

    Every failure is a ContractError of one line that names the folder.
    """
    where = f"model folder {str(path)!r}"
    try:
        check_model_name(path.name)
        root = path.resolve(strict=True)
        manifest = parse_manifest(_json(read_text(root, MANIFEST_FILE, MAX_MANIFEST_BYTES)))
        if manifest.name != path.name:
            raise ContractError(f"niff.json names the model {manifest.name!r}, not {path.name!r}")
        for kind, record in manifest.artifacts.items():
            if not inside(root, record.path).stat().st_size:
                raise ContractError(f"{kind} artifact {record.path!r} is empty")
        config = parse_config(read_text(root, CONFIG_FILE, MAX_CONFIG_BYTES))
        check_config(config, manifest, version_folders(root))
        labels = _labels(root, manifest)
    except ContractError as exc:
        raise ContractError(one_line(f"{where}: {exc}", MAX_MESSAGE)) from None
    except OSError as exc:
        raise ContractError(one_line(f"{where}: {exc.strerror or exc}", MAX_MESSAGE)) from None
    except (ValueError, RecursionError, RuntimeError) as exc:  # what a hostile file can still provoke
        raise ContractError(one_line(f"{where}: cannot be read: {type(exc).__name__}: {exc}", MAX_MESSAGE)) from None
    return ModelFolder(name=path.name, path=root, manifest=manifest, config=config, labels=labels)


def version_folders(path: Path) -> tuple[int, ...]:
    """The model versions in a model folder, ascending: its subfolders named by an integer without a
    leading zero (Triton's rule; it ignores other names). niff.json describes one of them."""
    return tuple(
        sorted(int(entry.name) for entry in path.iterdir() if _VERSION_NAME.fullmatch(entry.name) and entry.is_dir())
    )


def _labels(root: Path, manifest: Manifest) -> tuple[str, ...]:
    """The labels file's class names, after checking the bytes just read against niff.json's sha256."""
    data = read_bytes(root, manifest.labels_file, MAX_LABELS_BYTES)
    labels = parse_labels(_decode(data, manifest.labels_file), manifest.num_classes)
    # Absent only in folders of earlier exporters (niff-export always writes it): accepted for them alone.
    expected = manifest.labels_sha256
    found = hashlib.sha256(data).hexdigest()
    if expected is not None and found != expected:
        raise ContractError(
            f"{manifest.labels_file} changed after export: its sha256 is {found}, niff.json records {expected}; "
            "restore the file or export the model again"
        )
    return labels


def inside(root: Path, relative: str) -> Path:
    """``relative`` under ``root``, refused unless it is a relative path to a regular file inside ``root``."""
    parts = PurePosixPath(relative).parts
    if PurePosixPath(relative).is_absolute() or ".." in parts or "\\" in relative or "\x00" in relative:
        raise ContractError(f"{relative!r} must be a relative path inside the model folder")
    try:
        resolved = (root / relative).resolve(strict=True)
    except FileNotFoundError:
        raise ContractError(f"{relative!r} is missing") from None
    except RuntimeError:  # Python before 3.13: a symlink loop (3.13 raises OSError ELOOP)
        raise ContractError(f"{relative!r} is a symlink loop") from None
    if not resolved.is_relative_to(root.resolve()):
        raise ContractError(f"{relative!r} leads out of the model folder (to {str(resolved)!r})")
    if not stat.S_ISREG(resolved.stat().st_mode):
        raise ContractError(f"{relative!r} is not a regular file")
    return resolved


def read_bytes(root: Path, relative: str, limit: int) -> bytes:
    """A file inside ``root``, at most ``limit`` bytes."""
    path = inside(root, relative)
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ContractError(f"{relative} is larger than {limit} bytes")
    return data


def read_text(root: Path, relative: str, limit: int) -> str:
    """A UTF-8 text file inside ``root``, at most ``limit`` bytes."""
    return _decode(read_bytes(root, relative, limit), relative)


def _decode(data: bytes, relative: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError(f"{relative} is not UTF-8 text: {exc}") from None


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"niff.json is not JSON: {exc}") from None
    except RecursionError:
        raise ContractError("niff.json is nested too deeply to read (arrays or objects inside each other)") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ContractError(f"niff.json cannot be read: {one_line(str(exc), MAX_DETAIL)}") from None


def parse_labels(text: str, num_classes: int | None = None) -> tuple[str, ...]:
    """One class name per line, line i naming class i; blank lines are an error, not skipped."""
    lines = text.splitlines()
    blank = next((number for number, line in enumerate(lines, 1) if not line.strip()), None)
    if blank is not None:
        raise ContractError(f"the labels file's line {blank} is blank; every line names one class")
    if num_classes is not None and len(lines) != num_classes:
        raise ContractError(f"the labels file has {len(lines)} lines for {num_classes} classes")
    return tuple(line.strip() for line in lines)


def labels_text(labels: tuple[str, ...] | list[str]) -> str:
    """What :func:`parse_labels` reads back as ``labels``."""
    if any(not label.strip() or "\n" in label or "\r" in label for label in labels):
        raise ContractError("labels must be non-blank single lines")
    return "".join(f"{label.strip()}\n" for label in labels)


def sha256_file(path: Path | str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
