"""Reading the layout of JSON text and of a prompt's worked examples (schema/layout.py):
what ``[local] whitespace = "auto"`` follows."""

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


def test_examples_in_the_system_prompt_decide_and_schemas_do_not_count() -> None:
    compact = [json.dumps(VALUE, separators=(",", ":")), '{"kind":"edit_code"}']
    assert prompt_layout(_system(compact)) == "compact"
    assert choose_layout("auto", _system(compact)) == "compact"
    spaced = [json.dumps(VALUE), '{"kind": "explain"}']
    # a compact schema beside spaced examples: the examples decide
    assert choose_layout("auto", _system(spaced, (",", ":"))) == "spaced"
    # only a schema: no example, so json.dumps' layout
    assert prompt_layout(_system([])) is None
    assert choose_layout("auto", _system([], (",", ":"))) == DEFAULT_LAYOUT == "spaced"


def test_assistant_turns_are_examples() -> None:
    few_shot = [{"role": "user", "content": "q1"},
                {"role": "assistant", "content": '{"kind":"debug","n":1}'},
                {"role": "user", "content": "q2"}]
    assert choose_layout("auto", few_shot) == "compact"
    indented = [*few_shot[:1], {"role": "assistant", "content": json.dumps(VALUE, indent=2)}]
    assert choose_layout("auto", indented) == "any"


def test_majority_wins_and_a_tie_goes_to_spaced() -> None:
    c, s = '{"a":1}', '{"a": 1}'
    assert choose_layout("auto", _system([c, c, s])) == "compact"
    assert choose_layout("auto", _system([c, s])) == "spaced"


def test_a_set_layout_is_kept() -> None:
    msgs = _system(['{"a":1}'])
    assert choose_layout("spaced", msgs) == "spaced"
    assert choose_layout("any", msgs) == "any"
    assert choose_layout("auto", [{"role": "user", "content": "no json {here"}]) == "spaced"
