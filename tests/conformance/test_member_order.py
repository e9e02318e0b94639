"""The member order structgen's llguidance grammar emits, as a documented property.

JSON object members are unordered; a grammar emits them in one order. docs/conformance.md
("Member order") states it: a node's declared ``properties`` in their order, merged left to
right in the node's own member order through ``allOf`` / ``anyOf`` / ``$ref``; additional and
pattern properties after every declared one, in any order among themselves. These tests read
the order back from compiled grammars (:func:`in_grammar_order`) and check that relaxation
keeps it and that every valid object can still be produced.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import llguidance
import pytest

from structgen.schema.relax import apply_relaxation, disjoint_one_of_to_any_of
from structgen.tools.conformance import (
    Instance,
    SchemaCase,
    check_case,
    compact,
    grammar_accepts,
    in_grammar_order,
    smollm_tokenizer,
)


def matcher(schema: Any) -> Any:
    m = llguidance.LLMatcher(smollm_tokenizer(),
                             llguidance.grammar_from("json_schema", json.dumps(schema)),
                             log_level=0)
    assert not m.is_error(), m.get_error()
    return m


def emitted(schema: Any, data: dict[str, Any]) -> list[str] | None:
    text = in_grammar_order(matcher(schema), smollm_tokenizer(), data)
    return None if text is None else list(json.loads(text))


def test_declared_order_whatever_order_the_instance_uses() -> None:
    schema = {"type": "object", "properties": {"name": {}, "version": {}, "private": {}},
              "required": ["version", "name"]}
    assert emitted(schema, {"private": True, "version": "1", "name": "x"}) == [
        "name", "version", "private"]


def test_merges_left_to_right_in_the_nodes_member_order() -> None:
    defs = {"A": {"properties": {"a": {}, "b": {}}}}
    ref_first = {"$ref": "#/$defs/A", "properties": {"z": {}}, "$defs": defs}
    props_first = {"properties": {"z": {}}, "$ref": "#/$defs/A", "$defs": defs}
    all_of = {"allOf": [{"$ref": "#/$defs/A"}, {"properties": {"c": {}}}],
              "properties": {"z": {}}, "$defs": defs}
    data = {"z": 1, "c": 1, "b": 1, "a": 1}
    assert emitted(ref_first, {"z": 1, "b": 1, "a": 1}) == ["a", "b", "z"]
    assert emitted(props_first, {"b": 1, "a": 1, "z": 1}) == ["z", "a", "b"]
    assert emitted(all_of, data) == ["a", "b", "c", "z"]
    # a property declared twice keeps its first place
    twice = {"properties": {"b": {}, "a": {}}, "allOf": [{"properties": {"a": {}, "c": {}}}]}
    assert emitted(twice, {"c": 1, "a": 1, "b": 1}) == ["b", "a", "c"]


def test_additional_and_pattern_properties_come_after_in_any_order() -> None:
    schema = {"properties": {"b": {}}, "patternProperties": {"^x-": {"type": "string"}},
              "additionalProperties": {"type": "integer"}}
    assert emitted(schema, {"y": 1, "x-1": "s", "b": 1, "z": 2}) == ["b", "y", "x-1", "z"]
    assert emitted(schema, {"x-1": "s", "y": 1, "b": 1}) == ["b", "x-1", "y"]


def test_relaxing_one_of_keeps_the_member_order() -> None:
    # llguidance refuses oneOf; relaxation turns it into anyOf in the same place (it used to
    # move it to the end of the node, after `properties`: b before a)
    schema = {"oneOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                        {"properties": {"c": {"type": "string"}}, "required": ["c"]}],
              "properties": {"b": {}}}
    relaxed = json.loads(json.dumps(schema))
    assert apply_relaxation(relaxed, ("oneOf",))
    assert list(relaxed) == ["anyOf", "properties"]
    assert emitted(relaxed, {"b": 1, "a": 1}) == ["a", "b"]
    both = {"anyOf": [{"required": ["a"]}, {"required": ["b"]}], "oneOf": schema["oneOf"],
            "properties": {"b": {}}}
    assert apply_relaxation(both, ("oneOf",))
    assert list(both) == ["anyOf", "allOf", "properties"]
    tagged = {"oneOf": [{"properties": {"t": {"const": 1}}, "required": ["t"]},
                        {"properties": {"t": {"const": 2}}, "required": ["t"]}],
              "properties": {"b": {}}}
    assert list(disjoint_one_of_to_any_of(tagged)) == ["anyOf", "properties"]


@pytest.mark.parametrize("schema", [
    {"properties": {"a": {}, "b": {"type": "object", "properties": {"x": {}, "y": {}}}},
     "required": ["b"]},
    {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {"type": "object"}}}],
     "additionalProperties": {"type": "integer"}},
    {"anyOf": [{"properties": {"a": {}, "b": {"type": "object"}}},
               {"properties": {"b": {}, "a": {"type": "integer"}}}]},
])
def test_every_member_order_of_a_valid_object_is_producible(schema: dict[str, Any]) -> None:
    # brute force: whenever the grammar takes some order of an object, the walk finds one
    m, tok = matcher(schema), smollm_tokenizer()
    data = {"a": 1, "b": {"y": 2, "x": 1}, "c": 3}
    orders = [{k: ({"x": 1, "y": 2} if inner and k == "b" else data[k]) for k in outer}
              for outer in itertools.permutations(data) for inner in (False, True)]
    producible = any(grammar_accepts(m, tok, compact(value)) for value in orders)
    for value in orders:
        assert (in_grammar_order(m, tok, value) is not None) == producible


def test_check_counts_an_instance_in_another_order_as_json_only() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
                                               "b": {"type": "string"}},
              "required": ["b", "a"], "additionalProperties": False}
    case = SchemaCase("s", "order", schema, [Instance({"b": "x", "a": 1}, True),
                                             Instance({"b": "x"}, False)])
    result = check_case(case)
    assert (result.status, result.too_strict, result.too_strict_as_json) == ("fail", 1, 0)
    assert result.keywords == ["key-order"]
    really = SchemaCase("s", "strict", {"type": "integer", "maximum": 3},
                        [Instance(4, True)])  # a wrong label: the grammar refuses 4
    assert check_case(really).too_strict_as_json == 1
