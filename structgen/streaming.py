"""Streaming structured output: partial objects while the text arrives, then the final one.

:meth:`Engine.astream <structgen.engine.Engine.astream>` streams the backend's tokens.
For JSON outputs it parses the text received so far (pydantic-core's partial JSON mode) and
yields each new partial value (plain dicts/lists: fields appear as they are generated,
an unfinished string shows as far as it got, an unfinished number is held back). The text
so far is a prefix the grammar accepted, so the partial value never contains a field the
schema forbids. When the stream ends, the whole text goes through the same validation and
repair as a non-streamed call, and the final validated value (the Pydantic instance for a
model) is the last item yielded; if no valid value can be made, ``ValidationFailed`` is
raised instead of yielding an invalid one. For a Pydantic model the partial values are
instances of :func:`partial_model` (every field optional, nested models too), built
without validation; the model's validators run on the final value only.

An answer cut off at ``max_tokens`` is treated as in :meth:`Engine.arun`: the final step
raises ``ValidationFailed`` unless ``allow_truncated=True``. The final value is cached
as :meth:`Engine.arun <structgen.engine.Engine.arun>` caches it (same key; a cut answer
never), and a cache hit streams as one item, the final one. With ``final_result=True``
the last item is the :class:`StructuredResult` (its ``value``, ``truncated``,
``backend``, ...) instead of the bare value.

Regex, choice and grammar outputs yield the text so far, then the validated string.

A tool turn streams its call envelope (:func:`partial_tool_value`): a :class:`ToolCall`
once the tool's name is complete, its ``arguments`` a partial instance of the tool's
model; a list of them with ``parallel``; the text so far when the model answers in words.

    >>> async for item in engine.astream("Fix app.py", Intent):  # doctest: +SKIP
    ...     print(item)   # PartialIntent(kind='ed', ...) ... Intent(...)

Breaking out of the loop (or ``aclose()`` on the iterator) closes the backend's request:
a server's HTTP stream is closed, the embedded decoder drops the sequence.
"""

from __future__ import annotations

import re
import threading
import types
import weakref
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import from_json

from structgen.types import ToolCall, ToolTurn

# A number at the very end of the text may still grow ("12" may become "125" or "12.5"):
# it is held back. (A number followed by anything, a space included, is complete.)
_TRAILING_NUMBER = re.compile(r"-?[0-9][0-9.eE+-]*\Z")


def partial_value(text: str) -> Any:
    """The value of a JSON prefix, or ``None`` while nothing is parseable yet.

    Parsed by pydantic-core's JSON parser in partial mode (Rust, ~40x faster than
    ``partial-json-parser`` here): an unfinished string shows as far as it got, an
    unfinished literal (``tr``) or number is held back.
    """
    stripped = text.rstrip()
    if stripped.endswith('"') and _in_string(stripped) and \
            (len(stripped) - 1 - len(stripped[:-1].rstrip("\\"))) % 2 == 0:
        # the quote that opens a string, nothing in it yet: no value (``kind=None``, not
        # ``kind=''``)
        text = stripped[:-1]
    if not text.strip():
        return None
    end = _TRAILING_NUMBER.search(text)
    if end is not None and not _in_string(text):
        text = text[:end.start()]
    try:
        return from_json(text, allow_partial="trailing-strings")
    except ValueError:
        return None


def _in_string(text: str) -> bool:
    """Does ``text`` (a JSON prefix) end inside a string? A quote counts unless an odd
    run of backslashes precedes it: the alternating sum over run lengths counts exactly
    those (str.count only: no Python loop over the text)."""
    escaped, k = 0, 1
    while (n := text.count("\\" * k + '"')) > 0:
        escaped += n if k % 2 else -n
        k += 1
    return (text.count('"') - escaped) % 2 == 1


# Partial models ------------------------------------------------------------------------
# A Pydantic output streams as instances of a generated model in which every field is
# optional (nested models too): ``PartialIntent(kind='edit_code', files=None, ...)``. The
# instances are built without validation (``model_construct``): a value still being written
# ("ed" of "edit_code", half a list) would fail the real model's field validators, which
# therefore run only once, on the closed text, when the final instance is validated.
_partials: weakref.WeakKeyDictionary[type[BaseModel], type[BaseModel]] = \
    weakref.WeakKeyDictionary()
_partials_lock = threading.RLock()


def partial_model(model: type[BaseModel]) -> type[BaseModel]:
    """``model`` with every field optional (default ``None``), nested models likewise."""
    with _partials_lock:
        return _partial_model(model, set())


def _partial_model(model: type[BaseModel], building: set[type[BaseModel]]) -> type[BaseModel]:
    done = _partials.get(model)
    if done is not None:
        return done
    building.add(model)
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        hint = _partial_hint(info.annotation, building)
        fields[name] = (hint | None, Field(default=None, alias=info.alias))
    partial = create_model(f"Partial{model.__name__}", __doc__=model.__doc__,
                           __config__=ConfigDict(populate_by_name=True), **fields)
    building.discard(model)
    _partials[model] = partial
    return partial


def _partial_hint(hint: Any, building: set[type[BaseModel]]) -> Any:
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        # a model that contains itself: its inner occurrences stay plain values
        return Any if hint in building else _partial_model(hint, building)
    args = get_args(hint)
    if not args:
        return hint
    mapped = tuple(_partial_hint(a, building) for a in args)
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return Union[mapped]  # noqa: UP007 (a tuple of members, built at run time)
    if origin is Annotated:
        return mapped[0]  # constraints are the real model's, checked on the final value
    if origin in (list, set, frozenset, tuple, dict):
        return Any if origin is tuple else origin[mapped]
    return hint


def partial_instance(model: type[BaseModel], value: Any) -> Any:
    """``value`` (a partial JSON object) as an instance of ``partial_model(model)``."""
    return _construct(model, value)


def _construct(model: type[BaseModel], value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    partial = partial_model(model)
    by_key = {(info.alias or name): (name, info.annotation)
              for name, info in model.model_fields.items()}
    values: dict[str, Any] = {}
    for key, item in value.items():
        if key in by_key:
            name, hint = by_key[key]
            values[name] = _construct_hint(hint, item)
    return partial.model_construct(**values)


def _construct_hint(hint: Any, value: Any) -> Any:
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return _construct(hint, value)
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return _construct_hint(args[0], value)
    if origin is list and isinstance(value, list) and args:
        return [_construct_hint(args[0], v) for v in value]
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: _construct_hint(args[1], v) for k, v in value.items()}
    if (origin is Union or origin is types.UnionType) and isinstance(value, dict):
        member = _union_member(args, value)
        return value if member is None else _construct(member, value)
    return value


def _union_member(args: tuple[Any, ...], value: dict[str, Any]) -> type[BaseModel] | None:
    """The model of a union that ``value`` is being written as: one whose fields hold all of
    its keys, preferring one whose literal (discriminator) fields match."""
    fits: list[type[BaseModel]] = []
    for arg in args:
        if not (isinstance(arg, type) and issubclass(arg, BaseModel)):
            continue
        keys = {(info.alias or name): info for name, info in arg.model_fields.items()}
        if not set(value) <= set(keys):
            continue
        literals = [(k, get_args(keys[k].annotation)) for k in value
                    if get_origin(keys[k].annotation) is Literal]
        if literals and all(value[k] in allowed for k, allowed in literals):
            return arg
        fits.append(arg)
    return fits[0] if fits else None


def partial_tool_value(turn: ToolTurn) -> Callable[[str], Any]:
    """The envelope text so far → a partial :class:`ToolCall` (a list with ``parallel``, the
    text for a text answer), or ``None`` while no tool name is complete."""
    models = {t.name: t.model for t in turn.tools}

    def one(item: Any) -> Any:
        if not isinstance(item, dict):
            return None
        if "name" not in item:
            text = item.get("text")
            return text if isinstance(text, str) else None
        name, args = item["name"], item.get("arguments")
        if name not in models:  # still being written
            return None
        model = models[name]
        return ToolCall(name, partial_instance(model, args)
                        if model is not None and isinstance(args, dict) else args)

    def build(text: str) -> Any:
        value = partial_value(text)
        if isinstance(value, list):
            return [c for c in map(one, value) if isinstance(c, ToolCall)] or None
        return one(value)

    return build
