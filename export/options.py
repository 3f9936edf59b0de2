"""Option records: each field's default, help, text form and check, declared once beside the field.

``ExportOptions`` and ``CompactRequest`` declare their fields with :func:`option`; the records check
themselves with :func:`check_fields` and ``niff-export``'s parser is generated from them
(``cli_common.add_record_options``), so the Python API and the command line cannot drift apart.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from niff_export.errors import ExportError

MIN_SIZE = 8
OPTION_KEY = "niff_option"  # where a field's metadata holds its Option


@dataclass(frozen=True)
class Option:
    """How a record field is given on the command line and checked.

    ``help`` may say ``{default}``, replaced by the field's default. ``parse`` turns the text into the
    value (raising ``argparse.ArgumentTypeError``: a usage error); ``check`` returns what is wrong with a
    value (None when fine), in words that follow the option's name; ``load`` turns a parsed value into
    the field's (reading a file: its errors are ExportErrors). A field holding a record (``CompactRequest``)
    or a mapping (``keys``: one option per key) becomes an argument group titled ``group``.
    """

    help: str = ""
    flag: str | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], str | None] | None = None
    load: Callable[[Any], Any] | None = None
    group: tuple[str, str | None] | None = None
    record: type | None = None
    keys: tuple[tuple[str, Option], ...] = ()


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field whose metadata is its :class:`Option`."""
    return field(default=default, default_factory=default_factory, metadata={OPTION_KEY: Option(**spec)})


def count_option(default: int | None, *, metavar: str = "N", **spec: Any) -> Any:
    """A field holding a positive count: a usage error on the command line, an ExportError in Python."""
    return option(default, metavar=metavar, parse=positive_int, check=positive, **spec)


def flag_of(name: str, spec: Option) -> str:
    return spec.flag or "--" + name.replace("_", "-")


def option_fields(record: Any) -> Iterator[tuple[Field[Any], Option]]:
    """The fields of a record class (or instance) that are options, with their Option."""
    for item in fields(record):
        if OPTION_KEY in item.metadata:
            yield item, item.metadata[OPTION_KEY]


def default_of(item: Field[Any]) -> Any:
    return item.default_factory() if item.default_factory is not MISSING else item.default


def shown(value: Any) -> str:
    """A default as the command line would write it."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_fields(record: Any) -> None:
    """Each option's choices and check, for a record built in Python or from the command line."""
    for item, spec in option_fields(record):
        value = getattr(record, item.name)
        if value is None:
            continue
        if spec.choices is not None and value not in spec.choices:
            raise ExportError(f"unknown {flag_of(item.name, spec)} {value!r}; choose one of {', '.join(spec.choices)}")
        problem = spec.check(value) if spec.check else None
        if problem:
            raise ExportError(f"{flag_of(item.name, spec)} {problem}")


def positive(value: int) -> str | None:
    return None if isinstance(value, int) and value >= 1 else f"must be positive, got {value}"


def check_size(size: int) -> int:
    """The one check of the input size, for the Python APIs and every command's ``--size`` alike."""
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ExportError(f"the input size must be an integer of at least {MIN_SIZE} pixels, got {size!r}")
    return size


# Argument types: text to value, a usage error when the text is not one.


def size_argument(text: str) -> int:
    """``224``, ``224x224`` or ``224×224``: a square side length, checked by :func:`check_size`."""
    match = re.fullmatch(r"\s*(-?\d+)\s*(?:[xX×]\s*(-?\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a side length like 224, got {text!r}")
    height, width = int(match.group(1)), int(match.group(2) or match.group(1))
    if height != width:
        raise argparse.ArgumentTypeError(f"NIFF filters are defined for square inputs only, got {height}x{width}")
    try:
        return check_size(height)
    except ExportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def comma_list(check: Callable[[tuple[str, ...]], str | None]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list (``onnx,torchscript``), lower-cased and checked by the field's own check."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip().lower() for item in text.split(",") if item.strip())
        problem = check(items)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return items

    return parse


def triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers R,G,B, got {text!r}")
    return values  # type: ignore[return-value]
