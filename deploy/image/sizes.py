"""Size of an image's virtual-environment layer, computed from its lock without building the image.

For every package a lock pins, the wheel pip would install in the image (CPython 3.11, manylinux
x86_64, a file whose sha256 the lock names) is looked up on PyPI or in a local wheel store. Its zip
directory, read with HTTP range requests (kilobytes, not the wheel), gives every file's installed
size; prune.py's rule drops what the image build prunes; tar headers and padding are added as the
layer stores them. docs/deploy.md adds the base layers measured on the CPU images.

    python deploy/image/sizes.py [--find-links DIR] deploy/image/locks/serve-cuda.txt ...
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prune import prunable

INDEX = "https://pypi.org/simple"
# The images' interpreter and platform: Debian bookworm's CPython 3.11 (glibc 2.36), x86_64.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
TAG_PRIORITY: dict[Tag, int] = {
    tag: rank
    for rank, tag in enumerate(
        [*cpython_tags((3, 11), ["cp311"], PLATFORMS), *compatible_tags((3, 11), "cp311", PLATFORMS)]
    )
}
BLOCK = 512


def pins(lock: Path) -> dict[str, set[str]]:
    """name==version -> the sha256 hashes the lock allows."""
    found: dict[str, set[str]] = {}
    current = None
    for line in lock.read_text().splitlines():
        if match := re.match(r"^([a-z0-9][a-z0-9._-]*==\S+)", line):
            current = match.group(1)
            found[current] = set()
        if current and (digest := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            found[current].add(digest.group(1))
    return found


def rank(filename: str) -> int:
    tags = parse_wheel_filename(filename)[3]
    return min((TAG_PRIORITY[t] for t in tags if t in TAG_PRIORITY), default=-1)


def wheel_source(pin: str, hashes: set[str], stores: list[Path]) -> tuple[str, str]:
    """(filename, URL or local path) of the wheel pip would pick for the image."""
    name = pin.partition("==")[0]
    candidates = []
    request = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        for file in json.load(answer)["files"]:
            if file["filename"].endswith(".whl") and file["hashes"].get("sha256") in hashes:
                candidates.append((file["filename"], file["url"]))
    for store in stores:
        for path in store.glob(f"{name.replace('-', '_')}-*.whl"):
            if hashlib.sha256(path.read_bytes()).hexdigest() in hashes:
                candidates.append((path.name, str(path)))
    usable = [(rank(f), f, where) for f, where in candidates if rank(f) >= 0]
    if not usable:
        sys.exit(f"sizes: no wheel for {pin} that installs on CPython 3.11 manylinux x86_64")
    _, filename, where = min(usable)
    return filename, where


class RangeFile(io.RawIOBase):
    """A remote file read with HTTP range requests: zipfile seeks to the directory and reads it only."""

    def __init__(self, url: str) -> None:
        self.url, self.position = url, 0
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as answer:
            self.length = int(answer.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence] + offset
        return self.position

    def readinto(self, buffer) -> int:
        end = min(self.position + len(buffer), self.length)
        if end <= self.position:
            return 0
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.position}-{end - 1}"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            data = answer.read()
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def installed_bytes(filename: str, where: str) -> tuple[int, int]:
    """(bytes of the layer's tar stream after pruning, bytes pruned) for one wheel."""
    data_prefix = re.compile(r"^[^/]+\.data/(purelib|platlib)/")
    stream = open(where, "rb") if Path(where).exists() else io.BufferedReader(RangeFile(where), 1 << 20)  # noqa: SIM115
    kept = pruned = 0
    folders: set[PurePosixPath] = set()
    with stream, zipfile.ZipFile(stream) as wheel:
        for entry in wheel.infolist():
            if entry.is_dir():
                continue
            path = PurePosixPath(data_prefix.sub("", entry.filename))
            if prunable(path):
                pruned += entry.file_size
                continue
            kept += BLOCK + -(-entry.file_size // BLOCK) * BLOCK
            folders.update(path.parents)
    return kept + BLOCK * len(folders), pruned


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="+", type=Path)
    parser.add_argument("--find-links", action="append", default=[], type=Path, help="local wheel store")
    parser.add_argument("--details", action="store_true", help="one line per package")
    args = parser.parse_args(argv)
    for lock in args.locks:
        total = pruned_total = download = 0
        for pin, hashes in sorted(pins(lock).items()):
            filename, where = wheel_source(pin, hashes, args.find_links)
            size, pruned = installed_bytes(filename, where)
            total, pruned_total = total + size, pruned_total + pruned
            download += Path(where).stat().st_size if Path(where).exists() else RangeFile(where).length
            if args.details:
                print(f"  {pin:45} {size / 1e6:9.1f} MB  (pruned {pruned / 1e6:.1f} MB)")
        print(
            f"{lock.name}: venv layer {total / 1e6:.0f} MB after pruning {pruned_total / 1e6:.0f} MB; "
            f"wheels {download / 1e6:.0f} MB to download"
        )


if __name__ == "__main__":
    main()
