"""Suite-wide: say which golden vectors the run checks against."""

from __future__ import annotations

from reference_vectors import FULL_SET_DIR, REFERENCE_DIR, vectors


def pytest_report_header() -> str:
    which = (
        "full set"
        if REFERENCE_DIR == FULL_SET_DIR
        else "compact subset (the full set is not at " + str(FULL_SET_DIR) + ")"
    )
    return f"golden vectors: {which}, {len(vectors())} files in {REFERENCE_DIR}"
