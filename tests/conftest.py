"""Suite-wide: say which golden vectors the run checks against; keep the fast tier (``-m fast``) torch-free."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from reference_vectors import FULL_SET_DIR, REFERENCE_DIR, vectors

FAST = "fast"
# How a module declares itself part of the fast tier.
FAST_MARK = "pytestmark = pytest.mark.fast"


def fast_tier(config: pytest.Config) -> bool:
    return config.option.markexpr == FAST


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m fast`` the other test modules are not even imported: many import torch at their top."""
    if fast_tier(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return FAST_MARK not in collection_path.read_text()
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The fast tier shows that the service and its tests run without torch: a run that imported it fails."""
    if fast_tier(session.config) and "torch" in sys.modules and exitstatus == pytest.ExitCode.OK:
        print("\nthe fast tier imported torch; its tests must not (the service never does)", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_report_header() -> str:
    which = (
        "full set"
        if REFERENCE_DIR == FULL_SET_DIR
        else "compact subset (the full set is not at " + str(FULL_SET_DIR) + ")"
    )
    return f"golden vectors: {which}, {len(vectors())} files in {REFERENCE_DIR}"
