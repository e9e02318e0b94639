"""Validation: is this text a valid answer for this compiled output?

JSON outputs are checked with ``jsonschema`` (Draft 2020-12, formats asserted), the one
authority on validity, with ECMA-262 regular expressions (schema/ecma_regex.py) and no
retrieval of remote references; and, when the caller passed a Pydantic model, with Pydantic
too. Model text is parsed under :class:`~structgen.schema.limits.Limits` (NaN and Infinity
are never JSON). Errors come back as a list of
:class:`ErrorDetail` (instance pointer + message) ready to be fed back to a model.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jsonschema import (
    Draft3Validator,
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
    validators,
)
from jsonschema._utils import extras_msg
from jsonschema.exceptions import ValidationError as JsonSchemaValidationError
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

from structgen.errors import ErrorDetail, SchemaError
from structgen.schema import CompiledOutput
from structgen.schema.canonical import canonical_json
from structgen.schema.check import ECMA_FORMATS
from structgen.schema.drafts import declared_draft
from structgen.schema.ecma_regex import PatternTimeout, compile_ecma
from structgen.schema.grammar_check import grammar_accepts
from structgen.schema.limits import DEFAULT_LIMITS, Limits, nesting_depth, value_depth


@dataclass
class Outcome:
    """Result of validating one text. ``value`` is set only when ``ok``."""

    ok: bool
    value: Any = None
    data: Any = None  # the parsed JSON (also when invalid, if it parsed)
    errors: list[ErrorDetail] = field(default_factory=list)


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


# The validator ---------------------------------------------------------------------------
# jsonschema is the one authority on validity. Its regex keywords run Python ``re``, which
# is not the ECMA-262 dialect JSON Schema specifies (``\d`` matches any Unicode digit, ``$``
# matches before a final newline) and has no time limit; these keywords use
# schema/ecma_regex.py instead (RE2, linear time; a bounded fallback).
def _search(pattern: str, text: str) -> bool:
    return compile_ecma(pattern).search(text)


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield JsonSchemaValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                        schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [key for key in instance if key not in properties
            and not any(_search(p, key) for p in patterns)]


def _additional_properties(validator: Any, ap: Any, instance: Any,
                           schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield JsonSchemaValidationError(
                f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            names, verb = extras_msg(sorted(extras, key=str))
            yield JsonSchemaValidationError(
                f"Additional properties are not allowed ({names} {verb} unexpected)")


def _unevaluated_properties(validator: Any, uP: Any, instance: Any,
                            schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = set(_evaluated_keys(validator, instance, schema))
    unevaluated = [key for key in instance if key not in evaluated
                   and any(True for _ in validator.descend(instance[key], uP, path=key,
                                                           schema_path=key))]
    if unevaluated:
        if uP is False:
            names, verb = extras_msg(sorted(unevaluated, key=str))
            yield JsonSchemaValidationError(
                f"Unevaluated properties are not allowed ({names} {verb} unexpected)")
        else:
            names, verb = extras_msg(unevaluated)
            yield JsonSchemaValidationError("Unevaluated properties are not valid under the "
                                            f"given schema ({names} {verb} unevaluated and "
                                            "invalid)")


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> list[str]:
    """The instance keys some keyword of ``schema`` evaluates (jsonschema's
    ``find_evaluated_property_keys_by_schema``, with ECMA ``patternProperties``)."""
    if validator.is_type(schema, "boolean"):
        return []
    keys: list[str] = []
    for ref_keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(ref_keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)
            keys += _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance, resolved.contents)
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys += properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        sub = schema.get(keyword)
        if sub is not None:
            keys += (key for key, value in instance.items()
                     if next(validator.descend(value, sub), None) is None)
    patterns = schema.get("patternProperties")
    if isinstance(patterns, dict):
        keys += (key for key in instance if any(_search(p, key) for p in patterns))
    dependent = schema.get("dependentSchemas")
    if isinstance(dependent, dict):
        for name, sub in dependent.items():
            if name in instance:
                keys += _evaluated_keys(validator, instance, sub)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(keyword, []):
            if next(validator.descend(instance, sub), None) is None:
                keys += _evaluated_keys(validator, instance, sub)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys += _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys += _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys += _evaluated_keys(validator, instance, schema["else"])
    return keys


def _any_of(validator: Any, any_of: list[Any], instance: Any, schema: Any) -> Iterator[Any]:
    # jsonschema collects every error of every branch (the context of its message); below
    # nested unions (a recursive Union[Add, Mul, int]) that doubles per level. A branch's
    # first error rules it out, each (branch, value) is judged once per validation (the
    # memo), and structgen reports the anyOf itself, not its context.
    for index, subschema in enumerate(any_of):
        if _branch_valid(validator, instance, subschema, index):
            return
    yield JsonSchemaValidationError(f"{instance!r} is not valid under any of the given "
                                    "schemas")


def _one_of(validator: Any, one_of: list[Any], instance: Any, schema: Any) -> Iterator[Any]:
    valid = []
    for index, subschema in enumerate(one_of):
        if _branch_valid(validator, instance, subschema, index):
            valid.append(subschema)
            if len(valid) > 1:
                reprs = ", ".join(repr(each) for each in valid)
                yield JsonSchemaValidationError(f"{instance!r} is valid under each of {reprs}")
                return
    if not valid:
        yield JsonSchemaValidationError(f"{instance!r} is not valid under any of the given "
                                        "schemas")


# (id(branch), id(value)) -> (valid, value) for the validation running on this thread; the
# value is kept so that its id is not reused while the table lives
_memo = threading.local()


def _branch_valid(validator: Any, instance: Any, subschema: Any, index: int) -> bool:
    table = getattr(_memo, "table", None)
    key = (id(subschema), id(instance))
    if table is not None and key in table:
        return bool(table[key][0])
    valid = next(validator.descend(instance, subschema, schema_path=index), None) is None
    if table is not None:
        table[key] = (valid, instance)
    return valid


@contextlib.contextmanager
def _memoized(schema_json: str) -> Iterator[None]:
    """Judge each (union branch, value) once during the validation in this block. Not for
    schemas with dynamic references: there a branch's verdict depends on the path taken."""
    if "$dynamicRef" in schema_json or "$recursiveRef" in schema_json:
        yield
        return
    outer = getattr(_memo, "table", None)
    _memo.table = {} if outer is None else outer
    try:
        yield
    finally:
        _memo.table = outer


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    # jsonschema compares every pair of items (10,000 objects: minutes); a set of hashable
    # forms with JSON's equality (1 == 1.0, true != 1, key order ignored) is linear.
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for index, item in enumerate(instance):
        form = _hashable(item)
        if form in seen:
            yield JsonSchemaValidationError(
                f"the array has non-unique elements (item {index} repeats an earlier one)")
            return
        seen.add(form)


def _hashable(value: Any) -> Any:
    """A hashable form of JSON ``value``; equal forms for values JSON Schema calls equal."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 and 1.0 hash and compare equal
    if isinstance(value, dict):
        return ("object", frozenset((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("array", tuple(_hashable(v) for v in value))
    return ("other", repr(value))


def _refuse_retrieval(uri: str) -> Any:
    # structgen never fetches: a schema's remote reference is an outbound request chosen
    # by whoever wrote the schema (check_schema rejects them; this is the backstop)
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


NO_RETRIEVAL = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]

_ECMA_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}
# draft-03 has neither anyOf nor oneOf: they are not added to it
_UNIONS = {"anyOf": _any_of, "oneOf": _one_of}
EcmaValidator = validators.extend(Draft202012Validator, {
    **_ECMA_KEYWORDS, **_UNIONS, "unevaluatedProperties": _unevaluated_properties})
# A schema that declares an older draft is judged by that draft (draft-07 ignores a $ref's
# siblings, draft-04 has boolean exclusiveMaximum, ...): the grammar is built from its
# 2020-12 upgrade, the verdict on a value comes from the draft the author wrote for.
_DRAFT_VALIDATORS = {
    "draft-03": validators.extend(Draft3Validator, _ECMA_KEYWORDS),
    "draft-04": validators.extend(Draft4Validator, {**_ECMA_KEYWORDS, **_UNIONS}),
    "draft-06": validators.extend(Draft6Validator, {**_ECMA_KEYWORDS, **_UNIONS}),
    "draft-07": validators.extend(Draft7Validator, {**_ECMA_KEYWORDS, **_UNIONS}),
    "draft/2019-09": validators.extend(Draft201909Validator, {**_ECMA_KEYWORDS, **_UNIONS}),
}


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = _DRAFT_VALIDATORS.get(declared_draft(schema) or "", EcmaValidator)
    return cls(schema, format_checker=ECMA_FORMATS, registry=NO_RETRIEVAL)


def _run(schema_json: str, data: Any) -> list[ErrorDetail]:
    """Every error of ``data``, most useful first; [] when valid. A schema that cannot be
    applied (a reference it cannot resolve) raises SchemaError."""
    validator = _validator(schema_json)
    try:
        with _memoized(schema_json):
            if validator.is_valid(data):
                return []
            errors = sorted(validator.iter_errors(data), key=lambda e: (
                -len(e.absolute_path), e.validator != "type", e.message))
    except PatternTimeout as exc:
        return [ErrorDetail("", f"matching pattern {exc.args[0]!r} took too long: the value "
                                "is not accepted", "pattern")]
    except RecursionError:
        return [ErrorDetail("", "the value or the schema nests too deeply to validate",
                            "depth")]
    except Unresolvable as exc:
        raise SchemaError(f"unresolvable reference during validation: {exc}") from None
    return [ErrorDetail(_pointer(e.absolute_path), e.message, str(e.validator)) for e in errors]


_by_hash: dict[str, str] = {}


def is_valid(data: Any, output: CompiledOutput) -> bool:
    """Yes/no against a json output's schema, keyed by ``output.hash`` so the schema is not
    re-encoded per call (the result cache's hit path re-checks every cached value)."""
    key = _by_hash.get(output.hash)
    if key is None:
        if len(_by_hash) > 512:
            _by_hash.clear()
        key = _by_hash[output.hash] = canonical_json(output.validation_schema or {})
    return _data_error(data, output.limits) is None and not _run(key, data)


def schema_valid(data: Any, schema: dict[str, Any]) -> bool:
    """Yes/no: does ``data`` fit ``schema`` (no error messages are built)? A value whose
    pattern check times out or that nests too deeply does not fit."""
    schema_json = canonical_json(schema)
    validator = _validator(schema_json)
    try:
        with _memoized(schema_json):
            return bool(validator.is_valid(data))
    except (PatternTimeout, RecursionError):
        return False
    except Unresolvable as exc:
        raise SchemaError(f"unresolvable reference during validation: {exc}") from None


def schema_errors(data: Any, schema: dict[str, Any]) -> list[ErrorDetail]:
    """jsonschema errors for ``data`` as ErrorDetails, most useful first.

    Deepest instance location first (the most specific), and at one location a ``type``
    error before the others: "must be an integer" explains "not a multiple of 5".
    """
    return _run(canonical_json(schema), data)


def pydantic_errors(exc: PydanticValidationError) -> list[ErrorDetail]:
    return [ErrorDetail(_pointer(err["loc"]), err["msg"], err["type"]) for err in exc.errors()]


class _NotJson(ValueError):
    """A value JSON cannot carry (NaN, Infinity, an overflowing float, a huge integer)."""


def _constant(name: str) -> Any:
    raise _NotJson(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"the number {text[:20]} is out of range (JSON numbers are finite)")
    return value


@lru_cache(maxsize=8)
def _decoder(max_digits: int) -> json.JSONDecoder:
    def bounded_int(text: str) -> int:
        if len(text.lstrip("-")) > max_digits:
            raise _NotJson(f"an integer has {len(text)} digits (limit: "
                           f"[limits] max_number_digits = {max_digits})")
        return int(text)

    return json.JSONDecoder(parse_int=bounded_int, parse_float=_finite_float,
                            parse_constant=_constant)


def parse_json(text: str, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, list[ErrorDetail]]:
    """Strict JSON parse: raw control characters in strings, NaN and Infinity are rejected,
    and so is text past ``limits`` (length, nesting depth, integer digits)."""
    if len(text) > limits.max_chars:
        return None, [ErrorDetail("", f"the text has {len(text)} characters (limit: "
                                      f"[limits] max_chars = {limits.max_chars})", "json")]
    depth = nesting_depth(text, limits.max_depth)
    if depth > limits.max_depth:
        return None, [ErrorDetail("", f"JSON nests {depth} levels deep (limit: "
                                      f"[limits] max_depth = {limits.max_depth})", "json")]
    try:
        return _decoder(limits.max_number_digits).decode(text), []
    except json.JSONDecodeError as exc:
        return None, [ErrorDetail("", f"invalid JSON: {exc.msg.removesuffix(' at')} at "
                                      f"line {exc.lineno} column {exc.colno}", "json")]
    except (_NotJson, ValueError) as exc:  # ValueError: CPython's own int-digits limit
        return None, [ErrorDetail("", f"invalid JSON: {exc}", "json")]
    except RecursionError:
        return None, [ErrorDetail("", "JSON nests too deeply to parse", "json")]


def _data_error(data: Any, limits: Limits) -> ErrorDetail | None:
    """What makes already-parsed ``data`` unacceptable before any schema is applied:
    nesting past the limit, NaN or infinite numbers (repair output is checked here)."""
    depth = value_depth(data, limits.max_depth)
    if depth > limits.max_depth:
        return ErrorDetail("", f"the value nests more than {limits.max_depth} levels deep "
                               f"(limit: [limits] max_depth = {limits.max_depth})", "depth")
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return ErrorDetail("", f"{node} is not a JSON number", "type")
        # repaired or coerced data did not go through parse_json's digit limit
        if isinstance(node, int) and abs(node) >= _int_bound(limits.max_number_digits):
            return ErrorDetail("", f"an integer has more than {limits.max_number_digits} "
                                   f"digits (limit: [limits] max_number_digits = "
                                   f"{limits.max_number_digits})", "type")
        if isinstance(node, str) and not _is_unicode(node):
            return ErrorDetail("", f"{_short(node)} holds a lone surrogate: not Unicode text",
                               "type")
        if isinstance(node, dict):
            bad = next((k for k in node if isinstance(k, str) and not _is_unicode(k)), None)
            if bad is not None:
                return ErrorDetail("", f"the key {_short(bad)} holds a lone surrogate: not "
                                       "Unicode text", "type")
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    return None


@lru_cache(maxsize=8)
def _int_bound(digits: int) -> int:
    """The smallest integer with more than ``digits`` digits."""
    return 10 ** digits


def _is_unicode(text: str) -> bool:
    """No lone surrogates (JSON's "\\ud800" parses to one; it has no UTF-8 form)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _short(text: str) -> str:
    return ascii(text if len(text) <= 40 else text[:37] + "...")


def validate_data(data: Any, output: CompiledOutput) -> Outcome:
    """Validate already-parsed JSON data against a json output."""
    schema = output.validation_schema
    if schema is None:
        raise SchemaError(f"a {output.kind} output validates text, not parsed JSON data: "
                          "use validate_text")
    problem = _data_error(data, output.limits)
    errors = [problem] if problem is not None else schema_errors(data, schema)
    if errors:
        return Outcome(False, data=data, errors=errors)
    if output.model is not None:
        try:
            value: Any = model_value(output.model, data)
        except PydanticValidationError as exc:
            return Outcome(False, data=data, errors=pydantic_errors(exc))
        return Outcome(True, value=value, data=data)
    return Outcome(True, value=data, data=data)


def model_value(model: type[BaseModel], data: Any, text: str | None = None) -> BaseModel:
    """``model`` validated from JSON ``data`` (or its ``text``) in JSON mode.

    The data came from JSON text, and Pydantic's JSON mode is what reads it as JSON:
    under ``strict=True`` Python mode refuses an enum's string, a tuple's list, a UUID's
    or a date's string, so a strict model could never validate.
    """
    if text is None:
        text = json.dumps(data, ensure_ascii=False)
    return model.model_validate_json(text)


def validate_text(text: str, output: CompiledOutput) -> Outcome:
    """Validate a model's raw text against ``output``."""
    if output.kind == "json":
        data, errors = parse_json(text, output.limits)
        if errors:
            return Outcome(False, errors=errors)
        return validate_data(data, output)
    if output.kind == "regex":
        try:
            matched = compile_ecma(output.pattern or "").fullmatch(text)
        except PatternTimeout:
            return Outcome(False, errors=[ErrorDetail(
                "", f"matching /{output.pattern}/ took too long", "pattern")])
        if matched:
            return Outcome(True, value=text, data=text)
        return Outcome(False, errors=[ErrorDetail("", f"does not match /{output.pattern}/",
                                                  "pattern")])
    if output.kind == "choice":
        if text in (output.choices or ()):
            return Outcome(True, value=text, data=text)
        return Outcome(False, errors=[ErrorDetail(
            "", f"{text!r} is not one of {list(output.choices or ())}", "enum")])

    ok, message = grammar_accepts(output.grammar or "", text)
    if ok:
        return Outcome(True, value=text, data=text)
    return Outcome(False, errors=[ErrorDetail("", message, "grammar")])


def dump_value(value: Any) -> Any:
    """JSON-able form of a validated value (for caches and the CLI)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value
