"""The one error the contract raises."""

from __future__ import annotations

MAX_DETAIL = 300


class ContractError(ValueError):
    """A model folder, or a value meant for one, that breaks the contract; the message says where and why."""


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` as one printable line: line breaks and other unprintable characters (which a hostile file
    can put in a key or a name) escaped as Python does; cut to ``limit`` characters when given."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."
