"""A reader for the protobuf text format of Triton's ``config.pbtxt``.

Only what a model configuration uses: scalars, nested messages and lists; no schema, so every field
comes back as a list of values (a field may repeat) and the caller picks what it needs.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*                      # whitespace, comments
      |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      |(?P<punct>[{}\[\]:,;<>])
      |(?P<word>[A-Za-z0-9_.+\-]+)""",
    re.VERBOSE,
)

_PUNCTUATION = frozenset("{}[]:,;<>")

Message = dict[str, list[Any]]


class PbtxtError(ValueError):
    """The text is not valid protobuf text format."""


def parse(text: str) -> Message:
    """Parse a whole document into ``{field: [value, ...]}``; nested messages are dicts of the same shape."""
    tokens = _tokenize(text)
    message, end = _message(tokens, 0, closer=None)
    if end != len(tokens):
        raise PbtxtError(f"unexpected {tokens[end]!r}")
    return message


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise PbtxtError(f"unexpected character {text[pos]!r} at offset {pos}")
        if match.lastgroup:
            tokens.append(match.group(match.lastgroup))
        pos = match.end()
    return tokens


def _message(tokens: list[str], i: int, closer: str | None) -> tuple[Message, int]:
    fields: Message = {}
    while i < len(tokens) and tokens[i] != closer:
        name = tokens[i]
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise PbtxtError(f"expected a field name, found {name!r}")
        i += 1
        if i < len(tokens) and tokens[i] == ":":
            i += 1
        values, i = _value(tokens, i)
        fields.setdefault(name, []).extend(values)
        if i < len(tokens) and tokens[i] in (",", ";"):
            i += 1
    if closer is not None:
        if i == len(tokens):
            raise PbtxtError(f"missing {closer!r}")
        i += 1
    return fields, i


def _value(tokens: list[str], i: int) -> tuple[list[Any], int]:
    if i == len(tokens):
        raise PbtxtError("missing value at end of text")
    token = tokens[i]
    if token in ("{", "<"):
        message, i = _message(tokens, i + 1, closer="}" if token == "{" else ">")
        return [message], i
    if token == "[":
        items: list[Any] = []
        i += 1
        while i < len(tokens) and tokens[i] != "]":
            values, i = _value(tokens, i)
            items.extend(values)
            if i < len(tokens) and tokens[i] == ",":
                i += 1
        if i == len(tokens):
            raise PbtxtError("missing ']'")
        return items, i + 1
    return [_scalar(token)], i + 1


def _scalar(token: str) -> Any:
    if token[0] in "\"'":
        try:
            return ast.literal_eval(token)
        except (ValueError, SyntaxError) as exc:
            raise PbtxtError(f"bad string {token}") from exc
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    if token in {"true", "True"}:
        return True
    if token in {"false", "False"}:
        return False
    if token in _PUNCTUATION:
        raise PbtxtError(f"expected a value, found {token!r}")
    return token
