"""Remove from an image's virtual environment what serving and exporting never read.

The image build runs it on /opt/venv after installing a lock; deploy/image/sizes.py applies the same
rule to wheel listings to size the images it does not build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path, PurePosixPath

# Folders removed wherever they lie inside a package: bytecode caches (the images run with a read-only
# root and never write them; without them start-up compiles what it imports), the packages' own test
# suites, and C/C++ headers (nothing is compiled at run time).
PRUNED_FOLDERS = frozenset({"__pycache__", "tests", "test", "include"})
# torch's C++ test and tool executables (torch/bin) and CMake files (torch/share)...
PRUNED_TREES = (("torch", "bin"), ("torch", "share"))
# ...but `import torch` checks that its shared-memory manager is there.
KEPT = frozenset({PurePosixPath("torch/bin/torch_shm_manager")})
# Static libraries: only a linker reads them.
PRUNED_SUFFIXES = (".a",)


def prunable(relative: PurePosixPath) -> bool:
    """Whether a file inside site-packages (a path as a wheel lists it) is never read at run time.

    Package metadata stays whole: importlib.metadata and vulnerability scanners read it, and it holds
    the licenses.
    """
    parts = relative.parts
    if not parts or parts[0].endswith((".dist-info", ".data")) or relative in KEPT:
        return False
    return (
        any(part in PRUNED_FOLDERS for part in parts[:-1])
        or any(parts[: len(tree)] == tree for tree in PRUNED_TREES)
        or relative.suffix in PRUNED_SUFFIXES
    )


def prune(site_packages: Path) -> int:
    """Delete the prunable files under ``site_packages`` (and the folders left empty); bytes freed."""
    freed = 0
    for folder, _, files in os.walk(site_packages):
        for name in files:
            path = Path(folder, name)
            if prunable(PurePosixPath(path.relative_to(site_packages).as_posix())):
                freed += path.lstat().st_size
                path.unlink()
    for folder, _, _ in os.walk(site_packages, topdown=False):
        if Path(folder) != site_packages and not os.listdir(folder):
            Path(folder).rmdir()
    return freed


def main(venv: str) -> None:
    (site_packages,) = Path(venv).glob("lib/python*/site-packages")
    freed = prune(site_packages)
    print(f"prune: removed {freed / 1e6:.0f} MB from {site_packages}")


if __name__ == "__main__":
    main(*sys.argv[1:])
