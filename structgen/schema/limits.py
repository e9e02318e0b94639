"""Size and depth limits for untrusted JSON: model text and schemas.

Python's JSON parser and jsonschema recurse once per nesting level, so ``"[" * 3000`` raises
``RecursionError`` and a self-referencing schema recurses until the interpreter gives up;
CPython also refuses integers of more than 4300 digits with a bare ``ValueError``. These
limits are checked first, so such input gets a typed error (``ValidationFailed`` for model
text, ``SchemaError`` for schemas) instead. Every limit is a field of :class:`Limits`; pass
your own ``Limits(...)`` to the parse/validate functions to change one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True)
class Limits:
    """Limits on untrusted JSON (defaults documented in docs/reliability.md)."""

    max_depth: int = 128  # nesting of arrays/objects in model output
    max_chars: int = 8_000_000  # length of one model output text
    max_number_digits: int = 4300  # digits of one JSON integer (CPython refuses more)
    max_schema_depth: int = 256  # nesting of arrays/objects in a schema document


DEFAULT_LIMITS = Limits()

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.S)  # an unterminated string runs to the end
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def nesting_depth(text: str, stop_above: int) -> int:
    """How deeply arrays and objects nest in JSON(-like) ``text`` (brackets inside strings
    do not count). Cheap when the text has at most ``stop_above`` opening brackets, which
    is almost always: then that count bounds the depth and is returned instead."""
    opening = text.count("[") + text.count("{")
    if opening <= stop_above:
        return opening
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(1 if c in "[{" else -1 for c in skeleton), default=0)


def value_depth(value: object, stop_above: int) -> int:
    """How deeply lists and dicts nest in a Python value, without recursion; stops counting
    once the depth passes ``stop_above``."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: object = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_above:
            return deepest
        stack.extend((child, depth + 1) for child in children)  # type: ignore[attr-defined]
    return deepest
