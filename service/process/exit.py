"""How niff-serve ends on an error: one line on stderr, then its exit status."""

from __future__ import annotations

import sys
from typing import NoReturn

PROG = "niff-serve"


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(status)
