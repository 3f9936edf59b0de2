"""Numeric tensor data in a v2 JSON request, parsed without a Python object per number.

A JSON parser turns ``[0.1, 0.2, ...]`` into one Python float (32 bytes) per number, and nested
one-element lists into a list object per number: 20 to 60 times the body's size in memory. Here every
``"data": [...]`` array that holds only numbers (at any nesting) is cut out of the text before the
JSON is parsed, replaced by a placeholder string, and read straight into float32 by NumPy. What is
left (names, shapes, parameters, base64 strings) is small, and :func:`parse_cost` bounds what parsing
it takes, so that it can be charged to the request's memory budget first.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np

# Memory a JSON parser takes per value beyond the text itself: a Python object and its slot in a list
# or dict. Counted per separator (, : [ {), the worst case measured 180 bytes (nested one-element lists).
_BYTES_PER_VALUE = 192
# Values of a request beside its tensor data: input and output names, shapes of up to 8 dimensions,
# parameters. Generous: tritonclient sends fewer than 30.
_STRUCTURE_VALUES = 1024
PLACEHOLDER = "\x00niff-numeric-data:"

# In valid JSON, a quote-delimited `"data"` followed by a colon can only be an object key: inside a
# string every quote is escaped.
_DATA_KEY = re.compile(rb'"data"\s*:\s*\[')
_NOT_NUMERIC = re.compile(rb"[^0-9eE+\-.,\[\]\s]")
_BRACKETS_TO_SPACES = bytes.maketrans(b"[]", b"  ")
_AFTER_VALUE = frozenset(b" \t\r\n,")


@dataclass(frozen=True)
class SplitJson:
    """The JSON text with numeric arrays replaced by placeholders, and where those arrays were."""

    remainder: bytes
    source: bytes
    spans: tuple[tuple[int, int], ...]

    def numbers(self, index: int) -> np.ndarray | None:
        """The numbers of cut-out array ``index``, flattened, as float32; None when they are not numbers."""
        start, end = self.spans[index]
        return parse_numeric_array(self.source[start:end])


def split_numeric_arrays(text: bytes) -> SplitJson:
    """Cut every all-numeric ``data`` array out of ``text``."""
    pieces: list[bytes] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for match in _DATA_KEY.finditer(text):
        start = match.end() - 1  # the opening bracket
        if start < position:
            continue
        end = _numeric_array_end(text, start)
        if end is None:
            continue
        pieces += [text[position:start], b'"\\u0000niff-numeric-data:%d"' % len(spans)]
        spans.append((start, end))
        position = end
    if not spans:
        return SplitJson(text, text, ())
    pieces.append(text[position:])
    return SplitJson(b"".join(pieces), text, tuple(spans))


def json_values(text: bytes) -> int:
    """An upper bound on the values parsing ``text`` makes (one more than its separators), counted in C."""
    return 1 + sum(text.count(separator) for separator in (b",", b":", b"[", b"{"))


def max_json_values(max_batch_size: int) -> int:
    """The most values a valid request's JSON holds once numeric arrays are cut out: one image string per
    batch element (and its brackets), plus names, shapes, outputs and parameters."""
    return _STRUCTURE_VALUES + 2 * max_batch_size


def parse_cost(text: bytes) -> int:
    """An upper bound on the memory that parsing ``text`` into Python objects takes."""
    return 2 * len(text) + _BYTES_PER_VALUE * json_values(text)


def _numeric_array_end(text: bytes, start: int) -> int | None:
    """Where the array opening at ``start`` ends, if it holds nothing but numbers and brackets.

    After a value in an object come only whitespace, a comma and then a quoted key, or the closing
    brace: so the run of number characters from ``start`` is the array plus at most one comma.
    """
    stop = _NOT_NUMERIC.search(text, start)
    end = len(text) if stop is None else stop.start()
    while end > start and text[end - 1] in _AFTER_VALUE:
        end -= 1
    if text[end - 1] != ord("]") or text.count(b"[", start, end) != text.count(b"]", start, end):
        return None
    return end


def parse_numeric_array(text: bytes) -> np.ndarray | None:
    """The numbers of an array's text, flattened, as float32; None when the text is not a list of numbers."""
    flat = text.translate(_BRACKETS_TO_SPACES)
    del text  # free the slice before NumPy makes its array
    if not flat.strip():
        return np.zeros(0, dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return np.fromstring(flat, dtype=np.float32, sep=",")
    except (ValueError, DeprecationWarning):
        return None


def placeholder_index(value: object, split: SplitJson) -> int | None:
    """The cut-out array a ``data`` value stands for, or None when it is not a placeholder."""
    if not isinstance(value, str) or not value.startswith(PLACEHOLDER):
        return None
    index = value.removeprefix(PLACEHOLDER)
    return int(index) if index.isascii() and index.isdigit() and int(index) < len(split.spans) else None
