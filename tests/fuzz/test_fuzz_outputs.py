"""Random and mutated model outputs through parse → repair → validate (``repair_locally``,
the model-free part of ``finalize``): a value it returns always validates against the full
schema, as real JSON; otherwise it reports errors (``finalize`` then raises
``ValidationFailed``). Never another exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from structgen.repair import repair_locally
from structgen.schema import compile_output
from structgen.types import Choice, Regex
from structgen.validate import schema_errors, validate_text

from .conftest import TRIED, examples

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "n": {"type": "integer", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]},
                 "maxItems": 3},
        "ok": {"type": "boolean", "default": False}},
     "required": ["date", "n"], "additionalProperties": False},
    {"type": "object", "properties": {"name": {"type": "string"},
                                      "children": {"type": "array", "items": {"$ref": "#"}}},
     "required": ["name"]},
    {"type": "array", "items": {"type": "number", "exclusiveMaximum": 1e6}, "minItems": 1},
    {"anyOf": [{"type": "integer"}, {"type": "object", "properties": {
        "k": {"type": "string", "pattern": r"^\w+$"}}, "required": ["k"]}]},
    {"type": "object", "patternProperties": {r"^x\d$": {"type": "integer"}},
     "additionalProperties": False},
    {"type": "string", "format": "date"},
    {"type": "number"},
]
OUTPUTS = [compile_output(s) for s in SCHEMAS]
REGEXES = [compile_output(Regex(r"\d{4}-\d{2}-\d{2}")), compile_output(Regex(r"(a+)+b")),
           compile_output(Choice(["yes", "no"])), compile_output(Regex(r"\w+\s\w+$"))]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**40, 10**40),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=12),
                         st.sampled_from(["2024-05-01", "x1", "a", "b", "\u0662\u0660\u0662\u0664-\u0660\u0665-\u0660\u0661"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(["date", "n", "tags", "ok", "name", "children", "k",
                                     "x1", "x٣", "DATE"]) | st.text(max_size=4),
                    inner, max_size=5)), max_leaves=15)
GARBAGE = ["```json\n", "```", "Here is the answer: ", "}", "]", "{", "[", ",", ":", '"',
           "'", "NaN", "Infinity", "-Infinity", "1e999", "9" * 5000, "[" * 3000,
           '{"a":' * 200, "\x00", "\udcff", "\ud800", "// c\n", "/* x */", "True", "None",
           "\u2028", "\n", " " * 50]


@st.composite
def model_text(draw: st.DrawFn) -> str:
    text = json.dumps(draw(json_values), ensure_ascii=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["truncate", "insert", "wrap", "bytes", "single"]))
        if action == "truncate" and text:
            text = text[:draw(st.integers(0, len(text)))]
        elif action == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(GARBAGE)) + text[at:]
        elif action == "wrap":
            text = draw(st.sampled_from(GARBAGE)) + text + draw(st.sampled_from(GARBAGE))
        elif action == "bytes":  # invalid UTF-8 from a server, decoded leniently
            raw = draw(st.binary(max_size=20))
            text += raw.decode("utf-8", errors=draw(st.sampled_from(["replace",
                                                                      "surrogateescape"])))
        else:
            text = text.replace('"', "'")
    return text


def _check_json(text: str, index: int) -> None:
    output = OUTPUTS[index]
    assert output.json_schema is not None
    fix = repair_locally(text, output, max_repairs=2)
    if not fix.outcome.ok:
        assert fix.attempts[-1].errors or fix.outcome.errors
        return
    value = fix.outcome.value
    json.dumps(value, allow_nan=False)  # real JSON: no NaN, no infinity
    assert not schema_errors(value, output.json_schema)
    assert validate_text(fix.text, output).ok  # the text handed on validates too
    if "pattern" not in json.dumps(SCHEMAS[index]):  # Python re is not ECMA: no oracle
        assert Draft202012Validator(SCHEMAS[index]).is_valid(value)


@settings(max_examples=examples(5000))
@given(model_text(), st.integers(0, len(SCHEMAS) - 1))
def test_model_outputs_validate_or_report_errors(text: str, index: int) -> None:
    TRIED["model outputs (json)"] += 1
    _check_json(text, index)


@settings(max_examples=examples(2000))
@given(st.one_of(st.text(max_size=40), st.sampled_from(GARBAGE), model_text()),
       st.integers(0, len(REGEXES) - 1))
def test_non_json_outputs_match_or_report_errors(text: str, index: int) -> None:
    TRIED["model outputs (regex/choice)"] += 1
    output = REGEXES[index]
    fix = repair_locally(text, output, max_repairs=2)
    if fix.outcome.ok:
        assert validate_text(fix.outcome.value, output).ok
    else:
        assert fix.outcome.errors
