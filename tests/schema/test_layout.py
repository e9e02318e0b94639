"""Reading the layout of JSON text and of a prompt's few-shot assistant turns
(schema/layout.py): what ``[local] whitespace = "auto"`` follows."""

from __future__ import annotations

import json

import pytest

from structgen.schema.layout import DEFAULT_LAYOUT, choose_layout, json_layout, prompt_layout

VALUE = {"kind": "debug", "targets": ["a.py", "b, c: d.py"], "n": {"x": 1, "y": [1, 2]}}


@pytest.mark.parametrize(("text", "layout"), [
    (json.dumps(VALUE), "spaced"),
    (json.dumps(VALUE, separators=(",", ":")), "compact"),
    (json.dumps(VALUE, indent=2), "indented"),
    ('{"a" : 1}', "other"),          # space before the colon
    ('{ "a": 1}', "other"),          # space inside the brace
    ('{"a": 1,"b": 2}', "other"),    # mixed
    ('{"s": "x\\", y: z"}', "spaced"),  # an escaped quote does not end the string
    ("[]", None), ("1", None), ('"a, b: c"', None),
])
def test_json_layout(text: str, layout: str | None) -> None:
    assert json_layout(text) == layout


def _system(examples: list[str], schema_layout: tuple[str, str] = (", ", ": ")) -> list[dict]:
    schema = {"type": "object", "properties": {"kind": {"type": "string"}}}
    return [{"role": "system", "content": "Answer with JSON following "
             + json.dumps(schema, separators=schema_layout) + "\nExamples:\n"
             + "\n".join(examples)},
            {"role": "user", "content": "The tests in tests/test_api.py fail"}]


def _turns(answers: list[str]) -> list[dict]:
    """Few-shot chat turns: a request and an answer each, then the real request."""
    turns: list[dict] = [{"role": "system", "content": "Answer with JSON."}]
    for i, answer in enumerate(answers):
        turns += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": answer}]
    return [*turns, {"role": "user", "content": "The tests in tests/test_api.py fail"}]


COMPACT = [json.dumps(VALUE, separators=(",", ":")), '{"kind":"edit_code"}']
SPACED = [json.dumps(VALUE), '{"kind": "explain"}']


def test_compact_or_spaced_examples_inside_a_message_do_not_count() -> None:
    # measured (benchmarks/results/quality.md): beside compact examples in the system
    # prompt the spaced grammar answered better than the compact one
    for examples in (COMPACT, SPACED):
        assert prompt_layout(_system(examples)) is None
        assert choose_layout("auto", _system(examples, (",", ":"))) == DEFAULT_LAYOUT == "spaced"
    user_json = [{"role": "user", "content": COMPACT[0]}]
    assert choose_layout("auto", user_json) == "spaced"


def test_indented_examples_inside_a_message_get_the_free_layout() -> None:
    # measured: beside indented examples in the system prompt "any" (the model writes
    # their indentation) answered better than spaced (49% vs 41% of fields, 47 tasks)
    indented = [json.dumps(VALUE, indent=2), json.dumps({"kind": "explain"}, indent=2)]
    assert prompt_layout(_system(indented)) is None
    assert choose_layout("auto", _system(indented)) == "any"
    # most examples not indented: spaced
    assert choose_layout("auto", _system([indented[0], *COMPACT])) == "spaced"
    # an indented schema is not an example
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}}, indent=2)
    assert choose_layout("auto", [{"role": "system", "content": schema}]) == "spaced"
    # assistant turns still decide over the text
    assert choose_layout("auto", [*_system(indented)[:1], *_turns(COMPACT)[1:]]) == "compact"


def test_assistant_turns_are_examples() -> None:
    assert prompt_layout(_turns(COMPACT)) == "compact"
    assert choose_layout("auto", _turns(COMPACT)) == "compact"
    assert choose_layout("auto", _turns(SPACED)) == "spaced"
    # indented turns: no fixed-separator layout matches, so the bounded free one
    assert choose_layout("auto", _turns([json.dumps(VALUE, indent=2)])) == "any"
    # the turns decide, not the system prompt's examples beside them
    few_shot = [*_system(SPACED)[:1], *_turns(COMPACT)[1:]]
    assert choose_layout("auto", few_shot) == "compact"


def test_turns_that_are_not_examples_do_not_count() -> None:
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}},
                        separators=(",", ":"))
    prose = 'Sure: {"kind":"debug"}'
    tool_call = {"role": "assistant", "content": None, "tool_calls": []}
    assert prompt_layout([*_turns([schema, prose]), tool_call]) is None
    assert choose_layout("auto", _turns([schema, prose])) == "spaced"


def test_majority_wins_and_a_tie_goes_to_spaced() -> None:
    c, s = '{"a":1}', '{"a": 1}'
    assert choose_layout("auto", _turns([c, c, s])) == "compact"
    assert choose_layout("auto", _turns([c, s])) == "spaced"


def test_a_set_layout_is_kept() -> None:
    msgs = _turns(['{"a":1}'])
    assert choose_layout("spaced", msgs) == "spaced"
    assert choose_layout("any", msgs) == "any"
    assert choose_layout("compact", _system(SPACED)) == "compact"
    assert choose_layout("auto", [{"role": "user", "content": "no json {here"}]) == "spaced"
