"""Write the container images' lock files (`make lock`): deploy/image/locks/<target>-<variant>.txt.

A lock pins every package one image target installs, with the hashes of its files, resolved by
`uv pip compile` from the ranges in pyproject.toml (the one place versions are declared) for the
images' interpreter and platform. The Dockerfile installs a lock with `--require-hashes --no-deps`,
so two builds from one lock install the same files.

CPU variants take torch's CPU build: from the PyTorch CPU index, or from a local wheel store given
with --find-links. CUDA variants take PyPI's torch, whose NVIDIA wheels are the image's one CUDA
stack, and onnxruntime-gpu (with the same NVIDIA wheels) in place of onnxruntime: both packages
provide the `onnxruntime` module, so an image must hold only one of them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LOCKS = Path(__file__).resolve().parent / "locks"
BUILD_LOCK = LOCKS / "build.txt"

# The images' interpreter (Debian bookworm's python3) and platform.
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
INDEX_URL = "https://pypi.org/simple"

# Image target (a Dockerfile stage) -> the pyproject extras it installs, and its variants.
TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "serve-onnx": (("service",), ("cpu", "cuda")),
    "serve": (("service", "torch"), ("cpu", "cuda")),
    "export": (("export",), ("cpu",)),
}
# The CUDA major version of PyPI's torch and onnxruntime-gpu builds; onnxruntime-gpu's `cuda` extra
# leaves out cuBLAS, which its CUDA provider links (libcublas.so.13), so it is named here.
CUDA_MAJOR = 13
CUDA_EXTRA_REQUIREMENTS = (f"nvidia-cublas~={CUDA_MAJOR}.0",)


def lock_path(target: str, variant: str) -> Path:
    return LOCKS / f"{target}-{variant}.txt"


def requirements(target: str, variant: str) -> list[Requirement]:
    """What one image target needs, from pyproject.toml: base dependencies plus its extras (expanded
    where an extra names another one), with onnxruntime-gpu in place of onnxruntime for CUDA."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own_name = canonicalize_name(project["name"])
    found = [Requirement(text) for text in project["dependencies"]]
    pending, seen = list(TARGETS[target][0]), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == own_name:
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    if variant == "cuda":
        found = [_gpu_runtime(r) if r.name == "onnxruntime" else r for r in found]
        found += [Requirement(text) for text in CUDA_EXTRA_REQUIREMENTS]
    return found


def _gpu_runtime(requirement: Requirement) -> Requirement:
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return Requirement(f"onnxruntime-gpu[cuda,cudnn]{requirement.specifier}{marker}")


def build_requirements() -> list[Requirement]:
    """What building the project's wheel needs (pyproject's build-system), locked as build.txt."""
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    return [Requirement(text) for text in system["requires"]]


def compile_lock(
    path: Path, inputs: list[Requirement], header: str, options: list[str], constraints: list[str], uv: str
) -> None:
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / path.with_suffix(".in").name
        source.write_text("".join(f"{r}\n" for r in inputs))
        (Path(work) / "constraints.txt").write_text("".join(f"{c}\n" for c in constraints))
        command = [
            uv, "pip", "compile", source.name, "--constraint", "constraints.txt",
            "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM, "--index-url", INDEX_URL, *options,
            "--generate-hashes", "--no-config", "--quiet", "--custom-compile-command", "make lock",
        ]  # fmt: skip
        result = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"lock: {path.name}: uv pip compile failed:\n{result.stderr}")
    path.write_text(f"# {header}\n{result.stdout}")
    print(f"lock: wrote {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--constraint", action="append", default=[], help="extra version constraint for every lock (e.g. torch==X)"
    )
    parser.add_argument(
        "--find-links",
        action="append",
        default=[],
        help="local wheel store for the CPU builds of torch (default: the PyTorch CPU index)",
    )
    args = parser.parse_args(argv)
    uv = shutil.which("uv", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if uv is None:
        sys.exit("lock: uv is not installed (it is in the test extra: make install)")
    LOCKS.mkdir(exist_ok=True)
    compile_lock(BUILD_LOCK, build_requirements(), "Building the project's wheel.", [], [], uv)
    for target, (extras, variants) in TARGETS.items():
        for variant in variants:
            # The CPU build of torch: from a local wheel store if given, else from the PyTorch CPU index.
            torch_source = [a for d in args.find_links for a in ("--find-links", d)] or ["--torch-backend", "cpu"]
            compile_lock(
                lock_path(target, variant),
                requirements(target, variant),
                f"Image target {target}, {variant} variant: pyproject.toml's dependencies and extras {list(extras)}.",
                torch_source if variant == "cpu" else [],
                args.constraint,
                uv,
            )


if __name__ == "__main__":
    main()
