"""Streaming structured output: partial objects while the text arrives, then the final one.

:meth:`Engine.astream <structgen.engine.Engine.astream>` streams the backend's tokens.
For JSON outputs it parses the text received so far with ``partial-json-parser`` and
yields each new partial value (plain dicts/lists: fields appear as they are generated,
an unfinished string shows as far as it got, an unfinished number is held back). The text
so far is a prefix the grammar accepted, so the partial value never contains a field the
schema forbids. When the stream ends, the whole text goes through the same validation and
repair as a non-streamed call, and the final validated value (the Pydantic instance for a
model) is the last item yielded; if no valid value can be made, ``ValidationFailed`` is
raised instead of yielding an invalid one.

An answer cut off at ``max_tokens`` is treated as in :meth:`Engine.arun`: the final step
raises ``ValidationFailed`` unless ``allow_truncated=True``. A streamed value is never
cached. With ``final_result=True`` the last item is the :class:`StructuredResult` (its
``value``, ``truncated``, ``backend``, ...) instead of the bare value.

Regex, choice and grammar outputs yield the text so far, then the validated string.

    >>> async for item in engine.astream("Fix app.py", Intent):  # doctest: +SKIP
    ...     print(item)   # {'kind': 'ed'} ... {'kind': 'edit_code', ...} ... Intent(...)
"""

from __future__ import annotations

from typing import Any

from partial_json_parser import Allow, MalformedJSON
from partial_json_parser import loads as partial_loads

# Everything may be partial except numbers: "12" may still become "125" or "12.5".
_PARTIAL = Allow.ALL & ~Allow.NUM


def partial_value(text: str) -> Any:
    """The value of a JSON prefix, or ``None`` while nothing is parseable yet."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        return partial_loads(stripped, _PARTIAL)
    except (MalformedJSON, ValueError, IndexError, RecursionError):
        return None
