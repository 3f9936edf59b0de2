"""The images' lock files (deploy/image/locks, written by `make lock`) and prune rules: complete, hashed,
true to pyproject.toml's ranges, one CUDA stack in the CUDA variants, none in the CPU ones."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path, PurePosixPath

import pytest
from deploy_support import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

IMAGE = ROOT / "deploy" / "image"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"image_{name}", IMAGE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = load("lock")
prune = load("prune")
LOCKS = [(target, variant) for target, (_, variants) in lock.TARGETS.items() for variant in variants]
ids = [f"{t}-{v}" for t, v in LOCKS]


def pins(path: Path) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes) for every package of a lock file."""
    found: dict[str, tuple[Version, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        if match := re.match(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", line):
            name = canonicalize_name(match.group(1))
            assert name not in found, f"{path.name}: {name} pinned twice"
            found[name] = (Version(match.group(2)), 0)
        elif name and re.match(r"^\s+--hash=sha256:[0-9a-f]{64}", line):
            found[name] = (found[name][0], found[name][1] + 1)
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return found


def test_every_target_and_variant_has_a_lock_and_nothing_else_is_there():
    expected = {lock.lock_path(t, v) for t, v in LOCKS} | {lock.BUILD_LOCK}
    assert set(lock.LOCKS.glob("*.txt")) == expected
    assert [v for t, v in LOCKS if t == "export"] == ["cpu"], "export runs on the CPU only"


@pytest.mark.parametrize("target, variant", LOCKS, ids=ids)
def test_lock_pins_every_requirement_of_its_target_with_hashes(target, variant):
    locked = pins(lock.lock_path(target, variant))
    assert locked and all(hashes for _, hashes in locked.values()), "a package without a hash"
    for requirement in lock.requirements(target, variant):
        if requirement.marker and not requirement.marker.evaluate({"sys_platform": "linux"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{target}-{variant}: {requirement} is not locked"
        assert requirement.specifier.contains(locked[name][0], prereleases=True), (requirement, locked[name][0])
    assert canonicalize_name("niff-deploy") not in locked, "the project itself is installed from source"


def test_requirements_come_from_pyproject_extras(pyproject):
    """What a target needs is pyproject's base dependencies plus its extras, expanded."""
    optional = pyproject["project"]["optional-dependencies"]
    names = {t: {canonicalize_name(r.name) for r in lock.requirements(t, "cpu")} for t in lock.TARGETS}
    service = {canonicalize_name(Requirement(r).name) for r in optional["service"]}
    assert service <= names["serve-onnx"] and "torch" not in names["serve-onnx"]
    assert names["serve"] == names["serve-onnx"] | {"torch"}
    assert "torch" in names["export"] and "onnxruntime" in names["export"]
    cuda = {canonicalize_name(r.name) for r in lock.requirements("serve-onnx", "cuda")}
    assert "onnxruntime-gpu" in cuda and "onnxruntime" not in cuda


@pytest.mark.parametrize("target, variant", LOCKS, ids=ids)
def test_cpu_locks_hold_no_cuda_and_cuda_locks_one_cuda_stack(target, variant):
    locked = pins(lock.lock_path(target, variant))
    nvidia = sorted(n for n in locked if n.startswith(("nvidia-", "cuda-")))
    if "torch" in locked:
        assert (locked["torch"][0].local == "cpu") == (variant == "cpu"), locked["torch"][0]
    if variant == "cpu":
        assert not nvidia, f"CUDA packages in a CPU image: {nvidia}"
        assert "onnxruntime-gpu" not in locked
        return
    # One ONNX Runtime module; CUDA libraries of one major version, each from one package.
    assert "onnxruntime-gpu" in locked and "onnxruntime" not in locked
    suffixes = {m.group(1) for n in nvidia if (m := re.search(r"-cu(\d+)$", n))}
    assert suffixes == {str(lock.CUDA_MAJOR)}, suffixes
    for library in ("nvidia-cublas", "nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cufft", "nvidia-curand"):
        assert library in locked, f"onnxruntime-gpu's CUDA provider needs {library}"
    runtime = locked["nvidia-cuda-runtime"][0]
    assert runtime.major == lock.CUDA_MAJOR, runtime


@pytest.mark.parametrize("target", ["serve", "export"])
def test_torch_is_the_version_the_makefile_locks(target):
    """Every image runs the torch that `make lock` pins (the development environment's)."""
    version = re.search(r"^VENV_TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    torch = Requirement(f"torch=={version}")
    for variant in lock.TARGETS[target][1]:
        version = pins(lock.lock_path(target, variant))["torch"][0]
        assert torch.specifier.contains(version), (target, variant, version)


def test_build_lock_satisfies_the_build_system(pyproject):
    locked = pins(lock.BUILD_LOCK)
    for text in pyproject["build-system"]["requires"]:
        requirement = Requirement(text)
        assert requirement.specifier.contains(locked[canonicalize_name(requirement.name)][0])


@pytest.mark.parametrize(
    "path, pruned",
    [
        ("torch/include/ATen/ATen.h", True),
        ("torch/bin/protoc", True),
        ("torch/bin/torch_shm_manager", False),
        ("torch/share/cmake/Torch/TorchConfig.cmake", True),
        ("torch/lib/libtorch_cpu.so", False),
        ("torch/testing/_comparison.py", False),
        ("numpy/_core/tests/test_numeric.py", True),
        ("onnx/backend/test/data/node/test_abs/model.onnx", True),
        ("numpy/random/lib/libnpyrandom.a", True),
        ("fastapi/__pycache__/applications.cpython-311.pyc", True),
        ("numpy-2.4.6.dist-info/licenses/numpy/_core/include/numpy/LICENSE.txt", False),
        ("onnxruntime/capi/libonnxruntime.so.1.32.0", False),
        ("nvidia/cu13/include/cuda_runtime.h", True),
    ],
)
def test_prune_rules(path: str, pruned: bool):
    assert prune.prunable(PurePosixPath(path)) is pruned


def test_prune_removes_files_and_the_folders_it_empties(tmp_path):
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    for relative in ("pkg/__init__.py", "pkg/tests/test_a.py", "pkg/__pycache__/x.pyc", "pkg-1.dist-info/RECORD"):
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text("x" * 10)
    prune.main(str(tmp_path))
    left = sorted(p.relative_to(site).as_posix() for p in site.rglob("*"))
    assert left == ["pkg", "pkg-1.dist-info", "pkg-1.dist-info/RECORD", "pkg/__init__.py"]
