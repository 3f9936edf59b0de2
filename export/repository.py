"""Writing a model folder (docs/model-repository.md) atomically: staged beside the final folder, then moved in place.

A model folder holds versions, as Triton lays them out (``1/``, ``2/``, ...). An export writes one version
and the folder's own files (niff.json, config.pbtxt, labels.txt, report/), which then describe the version
just exported: the one niff-serve serves. The other versions already in the folder are kept (hard-linked
into the staged folder, so nothing large is copied), unless ``keep_versions`` keeps only the latest N;
config.pbtxt's ``version_policy`` lists them all (or says ``latest { num_versions: N }``). Replacing a
version that exists needs ``force``. Nothing in the existing folder changes until the staged folder is
complete, and a failed export leaves it as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from niff_contract import (
    LABELS_FILE,
    REPORT_DIR,
    ContractError,
    Manifest,
    Preprocessing,
    check_model_name,
    inside,
    parse_manifest,
    sha256_file,
    version_folders,
)
from niff_contract.folder import CONFIG_FILE, MANIFEST_FILE, MAX_MANIFEST_BYTES, read_text
from niff_export.errors import ExportError

# Written by every export for the version it exports; never carried over from the folder's earlier state.
FOLDER_FILES = frozenset({MANIFEST_FILE, CONFIG_FILE, LABELS_FILE, REPORT_DIR})


def check_name(name: str) -> str:
    """Model names appear in URLs and folder names (the contract's rule)."""
    try:
        return check_model_name(name)
    except ContractError as exc:
        raise ExportError(str(exc)) from None


def jsonable(value: Any) -> Any:
    """Constructor arguments as JSON: classes by name, tuples as lists."""
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class SharedFields:
    """What a model folder says once for all its versions: config.pbtxt's platform and tensors, the labels
    file, and niff.json's preprocessing (what a client of any version feeds it)."""

    platform: str
    input_shape: tuple[int, ...]
    num_classes: int
    labels_sha256: str | None
    preprocessing: Preprocessing

    @classmethod
    def of(cls, manifest: Manifest, labels_sha256: str | None = None) -> SharedFields:
        return cls(
            platform=manifest.platform,
            input_shape=tuple(manifest.input.shape),
            num_classes=manifest.num_classes,
            labels_sha256=manifest.labels_sha256 or labels_sha256,
            preprocessing=manifest.preprocessing,
        )

    def differences(self, earlier: SharedFields) -> list[str]:
        """How these fields differ from ``earlier``'s, in words."""
        said = {
            "platform": "platform",
            "input_shape": "input shape",
            "num_classes": "class count",
            "labels_sha256": "labels",
            "preprocessing": "preprocessing",
        }
        found = []
        for field, words in said.items():
            new, old = getattr(self, field), getattr(earlier, field)
            if field == "preprocessing":  # its input size (and the resize derived from it) is the input shape's
                new, old = (v.model_dump(exclude={"input_size", "resize"}) for v in (new, old))
            if new == old:
                continue
            if field in ("labels_sha256", "preprocessing"):
                found.append(f"other {words}")
            else:
                found.append(f"{words} {_shown(new)} (the folder's: {_shown(old)})")
        return found


def _shown(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


class StagingFolder:
    """A hidden folder beside the final one: everything is written there and moved in place only on success.

    Raises ExportError before anything is written when ``version`` exists and ``force`` is not given, when
    ``keep_versions`` would not keep ``version`` itself, or when the versions kept beside it describe another
    model than ``shared`` (they share one config.pbtxt, labels file and preprocessing).
    """

    def __init__(
        self,
        out_dir: Path,
        name: str,
        version: int,
        *,
        force: bool = False,
        keep_versions: int | None = None,
        shared: SharedFields | None = None,
    ) -> None:
        self.final = out_dir / name
        self.version = version
        self.version_dir = str(version)  # Triton's layout: the model files of version N live in N/
        if keep_versions is not None and keep_versions < 1:
            raise ExportError(f"--keep-versions must be positive, got {keep_versions}")
        self.present = self._present()
        self.kept, self.removed = self._plan_versions(force, keep_versions)
        if self.kept and shared is not None:
            self._check_shared(shared)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.path = out_dir / f".{name}.partial-{uuid.uuid4().hex[:8]}"
            (self.path / self.version_dir).mkdir(parents=True)
        except OSError as exc:
            raise ExportError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None

    @property
    def versions(self) -> tuple[int, ...]:
        """The versions the folder holds once committed, ascending."""
        return tuple(sorted({*self.kept, self.version}))

    def _present(self) -> tuple[int, ...]:
        if not self.final.exists():
            return ()
        if not (self.final / MANIFEST_FILE).is_file():
            raise ExportError(
                f"{self.final} exists and is not a model folder written by niff-export; choose another --out/--name"
            )
        try:
            return version_folders(self.final)
        except OSError as exc:
            raise ExportError(f"cannot list {self.final}: {exc.strerror or exc}") from None

    def _plan_versions(self, force: bool, keep_versions: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The versions kept beside the exported one, and those removed (only with ``keep_versions``)."""
        if self.version in self.present and not force:
            raise ExportError(
                f"{self.final} already holds version {self.version}; pass --force to replace it, or export "
                f"another --model-version (the next is {max(self.present) + 1})"
            )
        others = tuple(v for v in self.present if v != self.version)
        if keep_versions is None:
            return others, ()
        latest = sorted({*others, self.version})[-keep_versions:]
        if self.version not in latest:
            raise ExportError(
                f"--keep-versions {keep_versions} keeps the latest versions {latest} of {self.final}, not version "
                f"{self.version} that is being exported; export a higher --model-version"
            )
        return tuple(v for v in others if v in latest), tuple(v for v in others if v not in latest)

    def _check_shared(self, shared: SharedFields) -> None:
        """The exported version must fit the config.pbtxt, labels and preprocessing of the versions it joins."""
        try:
            earlier = parse_manifest(json.loads(read_text(self.final, MANIFEST_FILE, MAX_MANIFEST_BYTES)))
            labels = inside(self.final, earlier.labels_file)
            fields = SharedFields.of(earlier, None if earlier.labels_sha256 else sha256_file(labels))
        except (ContractError, OSError, ValueError, RecursionError) as exc:
            raise ExportError(
                f"cannot read {self.final / MANIFEST_FILE} to check the versions kept beside version {self.version}: "
                f"{exc}"
            ) from None
        differences = shared.differences(fields)
        if differences:
            kept = f"version{'s' if len(self.kept) > 1 else ''} {', '.join(map(str, self.kept))}"
            raise ExportError(
                f"version {self.version} does not fit the {kept} in {self.final}: {'; '.join(differences)}; "
                "all versions of a model folder share its config.pbtxt, labels and preprocessing: export under "
                "another --name, or pass --keep-versions 1 to replace the other versions"
            )

    def write_text(self, relative: str, text: str) -> None:
        (self.path / relative).write_text(text, encoding="utf-8")

    def commit(self) -> Path:
        """Move the staged folder in place, with the earlier versions it keeps linked in beside the new one."""
        if self.final.exists():
            if self._present() != self.present:
                raise ExportError(
                    f"the versions in {self.final} changed during the export (from {list(self.present)} to "
                    f"{list(self._present())}); nothing was written: export again"
                )
            try:
                self._carry_over()
            except OSError as exc:
                raise ExportError(
                    f"cannot keep the other versions of {self.final}: {exc.strerror or exc}; nothing was written"
                ) from None
        old = self.final.with_name(f".{self.final.name}.old-{uuid.uuid4().hex[:8]}")
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return self.final

    def _carry_over(self) -> None:
        """Everything of the existing folder but its own files, the replaced version and the removed ones."""
        dropped = FOLDER_FILES | {self.version_dir} | {str(v) for v in self.removed}
        for entry in self.final.iterdir():
            if entry.name not in dropped:
                _link_tree(entry, self.path / entry.name)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _link_tree(source: Path, target: Path) -> None:
    """``source`` again at ``target``: folders recreated, symlinks as symlinks, files hard-linked."""
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif source.is_dir():
        target.mkdir()
        for entry in source.iterdir():
            _link_tree(entry, target / entry.name)
        shutil.copystat(source, target)
    else:
        _link_or_copy(source, target)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (the files of kept versions are never written again), or a copy where links fail."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)
