"""The minimal completion budget-aware closing proposes (structgen.constrain.closing).

Every prefix of a valid instance, completed, must still be JSON; and for the schemas'
own valid instances it must, nearly always, be valid against the schema (the decoder
checks each proposal with the grammar engine and walks the grammar when one is refused,
so a miss costs a fallback, not an invalid answer).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from structgen.constrain.closing import JsonCursor, content_reserve, minimal_value
from structgen.errors import SchemaError
from structgen.schema import compile_output
from structgen.validate import validate_data

SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["edit_code", "debug"]},
        "targets": {"type": "array", "items": {"type": "string", "minLength": 2},
                    "minItems": 1},
        "confidence": {"type": "number", "minimum": 0.5, "maximum": 1},
        "meta": {"$ref": "#/$defs/Meta"},
    },
    "required": ["kind", "targets", "confidence", "meta"],
    "$defs": {"Meta": {"type": "object", "properties": {"n": {"type": "integer",
                                                              "exclusiveMinimum": 3}},
                       "required": ["n"]}},
}


@pytest.mark.parametrize(("prefix", "expected"), [
    ("", '{"kind":"debug","targets":["aa"],"confidence":1,"meta":{"n":4}}'),
    ('{"kind":"ed', 'it_code","targets":["aa"],"confidence":1,"meta":{"n":4}}'),
    ('{"kind":"debug","targets":["x', 'a"],"confidence":1,"meta":{"n":4}}'),
    ('{"kind":"debug","targets":[', '"aa"],"confidence":1,"meta":{"n":4}}'),
    ('{"kind":"debug","targets":["abc"],"confidence":0.7', ',"meta":{"n":4}}'),
    ('{"kind":"debug","targets":["abc"],"confidence":1,"meta":{"n":12', '}}'),
    ('{"kind":"debug","targets":["abc"],"confidence":1,"meta":{"n":12},"ta', None),
    ('{"kind":"debug","targets":["abc"],"confidence":1,"meta":{"n":12}}', ""),
    ('{"kind":"debug","targets":["abc"],"conf', 'idence":1,"meta":{"n":4}}'),
    ('{"kind":"debug",', '"targets":["aa"],"confidence":1,"meta":{"n":4}}'),
])
def test_completion_of_prefixes(prefix: str, expected: str | None) -> None:
    cursor = JsonCursor(SCHEMA)
    cursor.feed(prefix)
    got = cursor.completion()
    assert got == expected
    if got is not None:
        assert validate_data(json.loads(prefix + got), compile_output(SCHEMA)).ok


def test_text_that_is_not_json_gets_no_proposal() -> None:
    cursor = JsonCursor(SCHEMA)
    cursor.feed('{"kind" "x"')
    assert cursor.completion() is None


def test_minimal_values() -> None:
    assert minimal_value({}, {"type": "string", "minLength": 3}) == '"aaa"'
    assert minimal_value({}, {"type": ["string", "null"]}) == "null"
    assert minimal_value({}, {"type": "integer", "minimum": 7}) == "7"
    assert minimal_value({}, {"type": "integer", "maximum": -2}) == "-2"
    assert minimal_value({}, {"type": "array", "minItems": 2, "items": {"const": 1}}) == "[1,1]"
    assert minimal_value({}, {"anyOf": [{"type": "string"}, {"type": "boolean"}]}) == '""'


def test_every_prefix_of_maskbench_instances_completes_to_json(maskbench_dir: Path) -> None:
    """Over the dev sample's valid instances, each cut at every 7th character: a proposal
    is always JSON, and nearly always valid."""
    proposals = valid = 0
    for path in sorted(maskbench_dir.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        for row in rows:
            try:
                output = compile_output(row["schema"])
            except SchemaError:
                continue
            schema = output.json_schema
            for test in row.get("tests", []):
                if not test.get("valid"):
                    continue
                text = json.dumps(test["data"], separators=(",", ":"), ensure_ascii=False)
                cursor = JsonCursor(schema)
                for cut in range(0, len(text), 7):
                    cursor.feed(text[max(0, cut - 7):cut])
                    tail = cursor.completion()
                    if tail is None:
                        continue
                    proposals += 1
                    data = json.loads(text[:cut] + tail)  # always JSON
                    valid += validate_data(data, output).ok
    assert proposals > 2000
    assert valid / proposals > 0.85, (valid, proposals)


def test_an_anyof_branch_is_picked_by_its_const_member() -> None:
    # a tool call envelope: the completion must close the arguments of the tool named,
    # not of the first branch (which the grammar would refuse)
    def call(name: str, required: str) -> dict[str, object]:
        return {"type": "object", "required": ["name", "arguments"],
                "properties": {"name": {"const": name}, "arguments": {
                    "type": "object", "required": [required],
                    "properties": {required: {"type": "string"}}}}}

    cursor = JsonCursor({"anyOf": [call("first", "a"), call("second", "b")]})
    cursor.feed('{"name":"second","arguments":{')
    assert cursor.completion() == '"b":""}}'


@pytest.mark.parametrize(("prefix", "expected"), [
    ('{"kind": "ed', 'it_code", "targets": ["aa"], "confidence": 1, "meta": {"n": 4}}'),
    ('{"kind": "debug", "targets": ["a, b: c', '"], "confidence": 1, "meta": {"n": 4}}'),
    ('{"kind": "debug", "targets": ["abc"], "conf', 'idence": 1, "meta": {"n": 4}}'),
    ('{"kind": "debug",', ' "targets": ["aa"], "confidence": 1, "meta": {"n": 4}}'),
    ('{"kind":"debug",', '"targets":["aa"],"confidence":1,"meta":{"n":4}}'),  # compact
    # no space written yet: compact (a spaced grammar refuses it; the walk closes then)
    ('{"kind":', '"debug","targets":["aa"],"confidence":1,"meta":{"n":4}}'),
])
def test_completion_follows_the_answers_layout(prefix: str, expected: str) -> None:
    """A spaced answer ([local] whitespace "spaced") is completed spaced: the grammar takes
    the schema's minimal completion as is, without a fallback walk."""
    cursor = JsonCursor(SCHEMA)
    cursor.feed(prefix)
    assert cursor.completion() == expected
    assert validate_data(json.loads(prefix + expected), compile_output(SCHEMA)).ok


def test_a_spaced_cursor_completes_spaced_from_the_start() -> None:
    """The decoder says when the grammar enforces "spaced": the completion is spaced before
    the answer has shown a separator."""
    cursor = JsonCursor(SCHEMA, spaced=True)
    assert cursor.completion() == ('{"kind": "debug", "targets": ["aa"], "confidence": 1, '
                                   '"meta": {"n": 4}}')
    cursor.feed('{"kind":')
    assert cursor.completion() == ' "debug", "targets": ["aa"], "confidence": 1, "meta": {"n": 4}}'


# What the decoder keeps back for the required members still to come --------------------
REFLECTION = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["pass", "revise", "fail"]},
        "issues": {"type": "array", "items": {"type": "string"}},
        "next_action": {"type": "string", "minLength": 1},
        "score": {"type": "integer"},
        "confidence": {"type": "number"},
        "steps": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "short": {"type": "string", "maxLength": 6},
    },
    "required": ["verdict", "next_action", "score"],
}


@pytest.mark.parametrize(("schema", "owed"), [
    ({"type": "string"}, 12), ({"type": "string", "maxLength": 6}, 3),
    ({"type": "string", "pattern": "^[A-Z]{3}$"}, 1), ({"type": "string", "format": "date"}, 1),
    ({"type": "number"}, 3), ({"type": "integer"}, 1), ({"type": "boolean"}, 1),
    ({"enum": ["a", "b"]}, 1), ({"const": "x"}, 0), ({"type": "null"}, 0),
    ({"type": "array", "items": {"type": "string"}}, 12),
    ({"type": "array", "items": {"type": "string"}, "minItems": 2}, 24),
    ({"type": "array", "items": {"type": "string"}, "minItems": 5}, 24),  # capped
    ({"$ref": "#/$defs/Meta"}, 1),  # Meta's one required integer
    ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, 1),
])
def test_content_reserve_per_member_schema(schema: dict, owed: int) -> None:
    root = {"$defs": SCHEMA["$defs"]}
    assert content_reserve(root, schema) == owed


def test_what_is_owed_counts_required_members_not_begun() -> None:
    cur = JsonCursor(REFLECTION, spaced=True)
    assert cur.owed() == (0, 0)  # nothing written yet: nothing to weigh against
    cur.feed('{"verdict": "pass", "issues": ["')
    assert cur.in_string_value()
    assert cur.owed() == (12 + 1, 2)  # next_action's words and the score
    frame = cur.open_frame()
    assert frame is not None and frame.kind == "array"
    cur.feed('a"], "next_action": "Ship')
    assert cur.owed() == (1, 1)  # next_action is begun: only the score is owed
    top = cur.stack[0]
    assert cur.missing_keys(top) == {"score"}
    assert cur.optional_keys(top) == {"confidence", "steps", "short"}
    cur.feed(' it.", "score": 7')
    assert cur.owed() == (0, 0)
    assert not cur.in_string_value()
    cur.feed(', "short": "a\\')
    assert not cur.in_string_value()  # an escape is pending: its next byte is not an end
