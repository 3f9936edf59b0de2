"""What the distribution installs: unambiguous import names, and every package folder listed."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str) -> Path:
    top, _, rest = package.partition(".")
    base = ROOT / SETUPTOOLS["package-dir"].get(top, top)
    return base.joinpath(*rest.split(".")) if rest else base


def test_installed_top_level_names_cannot_collide_with_generic_modules():
    """`export` and `service` are common module names; the installed names carry the project's prefix."""
    top_level = {p.partition(".")[0] for p in SETUPTOOLS["packages"]}
    assert top_level == {"niff", "niff_contract", "niff_export", "niff_serve"}


def test_every_package_folder_is_installed():
    listed = {_folder(p) for p in SETUPTOOLS["packages"]}
    assert all((folder / "__init__.py").is_file() for folder in listed)
    tops = {_folder(p.partition(".")[0]) for p in SETUPTOOLS["packages"]}
    on_disk = {init.parent for top in tops for init in top.rglob("__init__.py")}
    assert on_disk == listed, f"package folders missing from pyproject: {sorted(map(str, on_disk - listed))}"


def test_the_installed_names_import_from_the_repository_folders():
    import niff_export
    import niff_serve

    assert Path(niff_export.__file__).parent == ROOT / "export"
    assert Path(niff_serve.__file__).parent == ROOT / "service"
