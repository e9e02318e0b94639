"""Regression tests for crashes the fuzzers (tests/fuzz) found in parse → repair → validate."""

from __future__ import annotations

from structgen.repair import coerce, repair_locally
from structgen.schema import compile_output

INTEGER_N = {"type": "object", "properties": {"n": {"type": "integer"}}}


def test_coercing_a_string_of_5000_digits_is_no_crash() -> None:
    # was: ValueError "Exceeds the limit (4300 digits)" out of the coercion stage
    assert coerce({"n": "9" * 5000}, INTEGER_N) == ({"n": "9" * 5000}, [])
    fix = repair_locally('"' + "9" * 5000 + '"', compile_output({"type": "integer"}))
    assert not fix.outcome.ok


def test_coercing_an_overflowing_number_string_is_no_crash() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "number"}}}
    assert coerce({"n": "1" * 400}, schema)[1] == []  # float() gives inf: no reading


def test_json_inside_a_string_is_parsed_within_limits() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "array"}}}
    assert coerce({"n": "[1, 2]"}, schema) == ({"n": [1, 2]}, ["/n: '[1, 2]' → [1, 2] (array)"])
    deep = "[" * 3000 + "]" * 3000
    # was: RecursionError out of json.loads; now it is no JSON, so one item of a list
    assert coerce({"n": deep}, schema)[0] == {"n": [deep]}


def test_lone_surrogates_are_not_valid_text() -> None:
    # was: UnicodeEncodeError out of RE2 on a patternProperties key "\ud800\udc00" that
    # json-repair produced from '{```json\n"\\ud800\\udc00": null}'
    from structgen.schema.ecma_regex import compile_ecma
    from structgen.validate import validate_text

    out = compile_output({"type": "object", "patternProperties": {r"^x\d$": {}},
                          "additionalProperties": False})
    fix = repair_locally('{```json\n"\\ud800\\udc00": null}', out)
    assert not fix.outcome.ok
    outcome = validate_text('{"a": "\\ud800"}', compile_output({"type": "object"}))
    assert not outcome.ok and "lone surrogate" in outcome.errors[0].message
    assert compile_ecma(r"^\d$").search("\ud800") is False  # the fallback matcher takes it
