"""Validation: is this text a valid answer for this compiled output?

JSON outputs are checked with ``jsonschema`` (Draft 2020-12, formats asserted) and, when
the caller passed a Pydantic model, with Pydantic too. Errors come back as a list of
:class:`ErrorDetail` (instance pointer + message) ready to be fed back to a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from structgen.errors import ErrorDetail, SchemaError
from structgen.schema import CompiledOutput
from structgen.schema.canonical import canonical_json


@dataclass
class Outcome:
    """Result of validating one text. ``value`` is set only when ``ok``."""

    ok: bool
    value: Any = None
    data: Any = None  # the parsed JSON (also when invalid, if it parsed)
    errors: list[ErrorDetail] = field(default_factory=list)


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json),
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


@lru_cache(maxsize=256)
def _fast_validator(schema_json: str) -> Any:
    """What answers "is it valid?": jsonschema-rs (tens of times faster; formats asserted)
    when it takes the schema, else jsonschema. Errors are always worded by jsonschema."""
    try:
        import jsonschema_rs

        return jsonschema_rs.Draft202012Validator(json.loads(schema_json), validate_formats=True)
    except Exception:  # not installed, or a schema it refuses: jsonschema decides
        return _validator(schema_json)


def _fast_is_valid(schema_json: str, data: Any) -> bool:
    try:
        return bool(_fast_validator(schema_json).is_valid(data))
    except Exception:  # data it cannot take (e.g. a huge int): let jsonschema judge
        return False


_by_hash: dict[str, str] = {}


def is_valid(data: Any, output: CompiledOutput) -> bool:
    """Yes/no against a json output's schema, keyed by ``output.hash`` so the schema is not
    re-encoded per call (the result cache's hit path re-checks every cached value)."""
    key = _by_hash.get(output.hash)
    if key is None:
        if len(_by_hash) > 512:
            _by_hash.clear()
        key = _by_hash[output.hash] = canonical_json(output.json_schema or {})
    return _fast_is_valid(key, data) or bool(_validator(key).is_valid(data))


def schema_errors(data: Any, schema: dict[str, Any]) -> list[ErrorDetail]:
    """jsonschema errors for ``data`` as ErrorDetails, most useful first.

    Deepest instance location first (the most specific), and at one location a ``type``
    error before the others: "must be an integer" explains "not a multiple of 5".
    """
    key = canonical_json(schema)
    if _fast_is_valid(key, data):
        return []
    validator = _validator(key)
    errors = sorted(validator.iter_errors(data),
                    key=lambda e: (-len(e.absolute_path), e.validator != "type", e.message))
    return [ErrorDetail(_pointer(e.absolute_path), e.message, str(e.validator)) for e in errors]


def pydantic_errors(exc: PydanticValidationError) -> list[ErrorDetail]:
    return [ErrorDetail(_pointer(err["loc"]), err["msg"], err["type"]) for err in exc.errors()]


def parse_json(text: str) -> tuple[Any, list[ErrorDetail]]:
    """Strict JSON parse (raw control characters in strings are rejected)."""
    try:
        return json.loads(text), []
    except json.JSONDecodeError as exc:
        return None, [ErrorDetail("", f"invalid JSON: {exc.msg} at line {exc.lineno} "
                                      f"column {exc.colno}", "json")]


def validate_data(data: Any, output: CompiledOutput) -> Outcome:
    """Validate already-parsed JSON data against a json output."""
    if output.json_schema is None:
        raise SchemaError(f"a {output.kind} output validates text, not parsed JSON data: "
                          "use validate_text")
    errors = schema_errors(data, output.json_schema)
    if errors:
        return Outcome(False, data=data, errors=errors)
    if output.model is not None:
        try:
            value: Any = output.model.model_validate(data)
        except PydanticValidationError as exc:
            return Outcome(False, data=data, errors=pydantic_errors(exc))
        return Outcome(True, value=value, data=data)
    return Outcome(True, value=data, data=data)


def validate_text(text: str, output: CompiledOutput) -> Outcome:
    """Validate a model's raw text against ``output``."""
    if output.kind == "json":
        data, errors = parse_json(text)
        if errors:
            return Outcome(False, errors=errors)
        return validate_data(data, output)
    if output.kind == "regex":
        if re.fullmatch(output.pattern or "", text, flags=re.DOTALL) is not None:
            return Outcome(True, value=text, data=text)
        return Outcome(False, errors=[ErrorDetail("", f"does not match /{output.pattern}/",
                                                  "pattern")])
    if output.kind == "choice":
        if text in (output.choices or ()):
            return Outcome(True, value=text, data=text)
        return Outcome(False, errors=[ErrorDetail(
            "", f"{text!r} is not one of {list(output.choices or ())}", "enum")])
    from structgen.schema.grammar_check import grammar_accepts

    ok, message = grammar_accepts(output.grammar or "", text)
    if ok:
        return Outcome(True, value=text, data=text)
    return Outcome(False, errors=[ErrorDetail("", message, "grammar")])


def dump_value(value: Any) -> Any:
    """JSON-able form of a validated value (for caches and the CLI)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value
