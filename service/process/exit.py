"""How niff-serve ends on an error: one line on stderr, then its exit status."""

from __future__ import annotations

import sys
from typing import NoReturn

from niff_contract import ContractError

PROG = "niff-serve"


def startup_reason(exc: Exception) -> str:
    """Why start-up failed, in one line: a contract or configuration error says it itself, others by type."""
    return str(exc) if isinstance(exc, ContractError) else f"{type(exc).__name__}: {exc}"


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(status)
