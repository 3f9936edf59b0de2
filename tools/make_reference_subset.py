"""Write the compact subset of the golden vectors that ships with the tests, from the full set.

The full set (``../shared/reference``, made by running the paper's code; see its README) is 23 MB and
not part of a clone. The subset lets every golden test run anyway: every layer file, its batch cut to
the first sample (layers and models in eval mode treat samples independently, so the first sample's
output is still the reference's output; 3-channel layers keep three, see ``layer_samples``), and the
models whose state_dict is small, whole. Left out: the models too large for the budget (ResNet-18 split
11 MB, MobileNetV2 9 MB), which only the full set checks. Data only; the files keep their names, keys
and ``index.json`` layout, so the same loader reads both.

    python tools/make_reference_subset.py [SOURCE] [DEST]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "reference"
DEFAULT_DEST = ROOT / "tests" / "fixtures" / "reference"
BUDGET_BYTES = 3_000_000
# Models bigger than this stay out of the subset.
MAX_MODEL_BYTES = 1_000_000
MAX_SOLVED_CHANNELS = 3


def layer_samples(channels: int) -> int:
    """Samples a layer file keeps: one, or as many as its input channels when they are few, because the
    kernel test (tests/test_kernels.py) recovers a 3-channel layer's per-frequency channel mixing from
    that many independent inputs."""
    return channels if channels <= MAX_SOLVED_CHANNELS else 1


def subset_entry(source: Path, dest: Path, entry: dict) -> dict | None:
    """Write one file of the subset and return its index entry, or None when it stays out."""
    path = source / entry["file"]
    is_layer = entry["file"].startswith("layer_")
    if not is_layer and path.stat().st_size > MAX_MODEL_BYTES:
        return None
    data = torch.load(path, weights_only=True)
    if is_layer:
        samples = layer_samples(data["input"].shape[1])
        data = {**data, "input": data["input"][:samples].clone(), "output": data["output"][:samples].clone()}
    torch.save(data, dest / entry["file"])
    return {
        **entry,
        "input_shape": list(data["input"].shape),
        "output_shape": list(data["output"].shape),
        "subset_of": {"input_shape": entry["input_shape"], "output_shape": entry["output_shape"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("dest", nargs="?", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args(argv)
    index = json.loads((args.source / "index.json").read_text())
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.pt"):
        old.unlink()
    entries = [e for e in (subset_entry(args.source, args.dest, entry) for entry in index) if e is not None]
    (args.dest / "index.json").write_text(json.dumps(entries, indent=1) + "\n")
    total = sum(f.stat().st_size for f in args.dest.iterdir())
    left_out = sorted({e["file"] for e in index} - {e["file"] for e in entries})
    print(f"{len(entries)} of {len(index)} files, {total / 1e6:.2f} MB in {args.dest}; left out: {', '.join(left_out)}")
    if total > BUDGET_BYTES:
        print(f"the subset exceeds its budget of {BUDGET_BYTES / 1e6:.1f} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
