"""`make install` pins the CPU build of torch: from a local wheel store when pip has one, else from PyTorch's
CPU index; never a bare `torch==X`, which PyPI answers with a CUDA build on Linux. Offline: pip runs with
--no-index against fake wheel stores, and make only prints its commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "torch-pip-args.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def fake_wheel(folder: Path, version: str) -> Path:
    """A minimal valid wheel called torch: enough for pip to resolve it from a find-links folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


def pip_args(wheels: Path, *args: str, system: str | None = None, tmp_path: Path) -> str:
    """The script's output with pip configured only by ``PIP_FIND_LINKS=wheels`` (no config files)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1")
    if system is not None:
        fake_bin = tmp_path / "bin"
        fake_bin.mkdir()
        (fake_bin / "uname").write_text(f"#!/bin/sh\necho {system}\n")
        (fake_bin / "uname").chmod(0o755)
        env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["sh", str(SCRIPT), sys.executable, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_local_cpu_wheel_is_used_without_any_index(tmp_path: Path) -> None:
    fake_wheel(tmp_path / "wheels", "2.13.0+cpu")
    assert pip_args(tmp_path / "wheels", tmp_path=tmp_path) == "torch==2.13.0+cpu"


def test_without_a_local_wheel_the_cpu_build_comes_from_pytorchs_cpu_index(tmp_path: Path) -> None:
    fake_wheel(tmp_path / "wheels", "2.13.0")  # a plain version is not the pinned CPU build
    expected = f"torch==2.13.0+cpu --extra-index-url {CPU_INDEX}"
    assert pip_args(tmp_path / "wheels", tmp_path=tmp_path) == expected
    (tmp_path / "empty").mkdir()
    assert pip_args(tmp_path / "empty", tmp_path=tmp_path) == expected


def test_another_build_is_asked_for_by_its_tag(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    args = pip_args(tmp_path / "empty", "2.13.0", "cu130", tmp_path=tmp_path)
    assert args == "torch==2.13.0+cu130 --extra-index-url https://download.pytorch.org/whl/cu130"


def test_macos_pins_the_version_alone(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert pip_args(tmp_path / "empty", system="Darwin", tmp_path=tmp_path).startswith("torch==2.13.0 ")


def make_install_commands(*variables: str, venv: Path) -> list[str]:
    done = subprocess.run(
        ["make", "-n", "install", f"VENV={venv}", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.splitlines()


def test_make_install_resolves_torch_before_the_project(tmp_path: Path) -> None:
    commands = make_install_commands(venv=tmp_path / "venv")
    torch_line = next(i for i, c in enumerate(commands) if "torch-pip-args.sh" in c)
    project_line = next(i for i, c in enumerate(commands) if "-e '.[test]'" in c)
    assert torch_line < project_line
    python = f"{tmp_path}/venv/bin/python"
    assert commands[torch_line] == (f"{python} -m pip install -q $(sh tools/torch-pip-args.sh {python} 2.13.0 cpu)")
    cuda = make_install_commands("TORCH_VARIANT=cu130", venv=tmp_path / "venv")
    assert any(c.endswith(f"torch-pip-args.sh {python} 2.13.0 cu130)") for c in cuda)


def test_the_pinned_version_meets_the_projects_torch_requirement() -> None:
    pinned = re.search(r"^VENV_TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [requirement] = [Requirement(r) for r in extras["torch"]]
    assert requirement.name == "torch" and requirement.specifier.contains(f"{pinned}+cpu")


def test_script_is_executable_and_passes_shellcheck() -> None:
    assert os.access(SCRIPT, os.X_OK)
    shellcheck = Path(sys.executable).parent / "shellcheck"
    done = subprocess.run([str(shellcheck), str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout
