"""validate_text / validate_data: structured errors (pointer, message, keyword)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, model_validator

from structgen.schema import compile_output
from structgen.types import Choice, Grammar, Regex
from structgen.validate import dump_value, validate_data, validate_text

NAME = compile_output({"type": "object", "properties": {"name": {"type": "string"}},
                       "required": ["name"], "additionalProperties": False})


@pytest.mark.parametrize("text", [
    '{"name":"a\nb"}',  # raw newline inside a string (xgrammar on vLLM lets these through)
    '{"name":"a\tb"}',
    '{"name":"a\x00b"}',
    '{"name":"a\x1fb"}',
])
def test_raw_control_characters_in_strings_are_rejected(text: str) -> None:
    outcome = validate_text(text, NAME)
    assert not outcome.ok
    assert outcome.errors[0].keyword == "json"
    assert "Invalid control character" in outcome.errors[0].message


def test_escaped_control_characters_are_fine() -> None:
    outcome = validate_text('{"name":"a\\nb\\t\\u0000"}', NAME)
    assert outcome.ok and outcome.value == {"name": "a\nb\t\x00"}


@pytest.mark.parametrize(("text", "pointer", "keyword"), [
    ('{"name": 1}', "/name", "type"),
    ("{}", "", "required"),
    ('{"name": "x", "extra": 1}', "", "additionalProperties"),
    ('{"name": "x"', "", "json"),
    ("", "", "json"),
    ('{"name": "x"} trailing', "", "json"),
])
def test_errors_carry_pointer_and_keyword(text: str, pointer: str, keyword: str) -> None:
    outcome = validate_text(text, NAME)
    assert not outcome.ok and outcome.value is None
    assert (outcome.errors[0].pointer, outcome.errors[0].keyword) == (pointer, keyword)
    assert outcome.errors[0].message
    # an error about the whole answer is its message alone (no bare "/", issue 29)
    assert str(outcome.errors[0]) == (f"{pointer}: " if pointer else "") + \
        outcome.errors[0].message


def test_pointer_escapes_slash_and_tilde() -> None:
    out = compile_output({"type": "object", "properties": {
        "a/b": {"type": "object", "properties": {"c~d": {"type": "integer"}}}}})
    outcome = validate_data({"a/b": {"c~d": "x"}}, out)
    assert outcome.errors[0].pointer == "/a~1b/c~0d"


@pytest.mark.parametrize(("fmt", "good", "bad"), [
    ("email", "dev@example.com", "not an email"),
    ("date-time", "2024-05-06T07:08:09Z", "2024-05-06 07:08"),
    ("date", "2024-02-29", "2023-02-29"),
    ("time", "07:08:09+00:00", "25:00:00Z"),
    ("uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", "0f8fad5b"),
    ("ipv4", "192.168.0.1", "300.1.1.1"),
    ("ipv6", "::1", "::g"),
    ("uri", "https://example.com/a?b=c", "no scheme here"),
    ("hostname", "example.com", "-bad-.com"),
    ("duration", "P3DT4H", "3 days"),
])
def test_formats_are_asserted(fmt: str, good: str, bad: str) -> None:
    out = compile_output({"type": "string", "format": fmt})
    assert validate_data(good, out).ok
    outcome = validate_data(bad, out)
    assert not outcome.ok
    assert outcome.errors[0].keyword == "format"
    assert fmt in outcome.errors[0].message


class Range(BaseModel):
    lo: int
    hi: int

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.lo > self.hi:
            raise ValueError("lo must not exceed hi")
        return self


def test_pydantic_runs_after_jsonschema_for_model_outputs() -> None:
    out = compile_output(Range)
    ok = validate_text('{"lo": 1, "hi": 2}', out)
    assert ok.ok and ok.value == Range(lo=1, hi=2)
    assert dump_value(ok.value) == {"lo": 1, "hi": 2}
    bad = validate_text('{"lo": 3, "hi": 2}', out)  # the JSON Schema cannot say this
    assert not bad.ok and bad.data == {"lo": 3, "hi": 2}
    assert bad.errors[0].keyword == "value_error"
    assert "lo must not exceed hi" in bad.errors[0].message


def test_regex_choice_and_grammar_outputs() -> None:
    rx = compile_output(Regex(r"\d{3}-[a-z]+"))
    assert validate_text("123-abc", rx).ok
    assert validate_text("123-abc!", rx).errors[0].keyword == "pattern"
    ch = compile_output(Choice(["yes", "no"]))
    assert validate_text("no", ch).value == "no"
    assert validate_text("maybe", ch).errors[0].keyword == "enum"
    gr = compile_output(Grammar('start: "(" start ")" | "x"'))
    assert validate_text("((x))", gr).ok
    bad = validate_text("((x)", gr)
    assert bad.errors[0].keyword == "grammar"
    assert "incomplete" in bad.errors[0].message
    ebnf = compile_output(Grammar('root ::= "a" root | "b"'))
    assert ebnf.grammar_syntax == "ebnf"
    assert validate_text("aab", ebnf).ok
    assert not validate_text("aac", ebnf).ok


def test_validate_data_needs_a_json_output() -> None:
    from structgen.errors import SchemaError

    with pytest.raises(SchemaError, match="use validate_text"):
        validate_data("abc", compile_output(Regex("abc")))


def test_grammar_check_keeps_stderr_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    """A rejected byte is an answer, not a warning: llguidance must print nothing."""
    from structgen.schema.grammar_check import grammar_accepts

    ok, reason = grammar_accepts('start: "ab"', "xb")
    assert not ok and "byte 0" in reason
    ok, reason = grammar_accepts('start: "ab"', "ab")
    assert ok
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_json_error_reads_once_and_names_no_bare_pointer() -> None:
    """No doubled "at" from the decoder's own message, and an error about the whole answer
    is not shown under a bare "/" (the pointer of the member named "")."""
    from structgen.errors import ErrorDetail

    outcome = validate_text('{"kind": "edit_co', compile_output({"type": "object"}))
    message = str(outcome.errors[0])
    assert message.startswith("invalid JSON: Unterminated string starting at line 1 column 10")
    assert "at at" not in message and not message.startswith("/")
    assert str(ErrorDetail("/kind", "not one of the enum values")) == \
        "/kind: not one of the enum values"
