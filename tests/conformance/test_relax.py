"""loosen_until_it_compiles and upgrade_schema: only loosen, never tighten; real llguidance checks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft4Validator, Draft202012Validator

from structgen.errors import SchemaError
from structgen.schema.drafts import upgrade_schema
from structgen.schema.grammar_check import byte_tokenizer
from structgen.schema.relax import apply_relaxation, loosen_until_it_compiles


def llguidance_check(schema: Any) -> str | None:
    import llguidance

    m = llguidance.LLMatcher(byte_tokenizer(),
                             llguidance.grammar_from("json_schema", json.dumps(schema)),
                             log_level=0)
    return m.get_error() if m.is_error() else None


def refusing(*keywords: str):
    """An engine that refuses any schema using one of ``keywords`` (and records calls)."""
    calls: list[Any] = []

    def check(schema: Any) -> str | None:
        calls.append(schema)
        text = json.dumps(schema)
        for k in keywords:
            if f'"{k}"' in text:
                return f'Unimplemented keys: ["{k}"]'
        return None

    check.calls = calls  # type: ignore[attr-defined]
    return check


def test_supported_schema_is_returned_untouched() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3}}}
    out, relaxed = loosen_until_it_compiles(schema, llguidance_check)
    assert out is schema and relaxed == ()


def test_only_the_named_keyword_is_dropped() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 4}},
              "dependencies": {"a": ["b"]}, "required": ["a"]}
    out, relaxed = loosen_until_it_compiles(schema, llguidance_check)
    assert "dependencies" in relaxed
    assert out["properties"]["a"]["maxLength"] == 4 and out["required"] == ["a"]
    assert llguidance_check(out) is None
    assert "dependencies" in schema  # the input is not mutated


def test_one_of_becomes_any_of() -> None:
    schema = {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}
    out, relaxed = loosen_until_it_compiles(schema, refusing("oneOf"))
    assert relaxed == ("oneOf",)
    assert out == {"anyOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}


def test_a_keyword_inside_not_drops_the_whole_not() -> None:
    # dropping `pattern` inside `not` would make the schema reject more: the `not` goes
    schema = {"type": "string", "minLength": 2, "not": {"pattern": "^a"}}
    out, relaxed = loosen_until_it_compiles(schema, refusing("pattern"))
    assert out == {"type": "string", "minLength": 2}
    assert "pattern" in relaxed


def test_a_keyword_inside_if_drops_if_then_else() -> None:
    schema = {"type": "object", "if": {"properties": {"a": {"format": "email"}}},
              "then": {"required": ["b"]}, "else": {"required": ["c"]}}
    out, _ = loosen_until_it_compiles(schema, refusing("format"))
    assert out == {"type": "object"}


def test_looser_one_of_branch_turns_one_of_into_any_of() -> None:
    schema = {"oneOf": [{"type": "string", "format": "email"}, {"type": "string"}]}
    changed = apply_relaxation(schema, ("format",))
    assert changed and schema == {"anyOf": [{"type": "string"}, {"type": "string"}]}


def test_dropping_pattern_properties_drops_additional_properties_there() -> None:
    schema = {"type": "object", "patternProperties": {"^x": {"type": "integer"}},
              "additionalProperties": False}
    apply_relaxation(schema, ("patternProperties",))
    assert schema == {"type": "object"}  # else {"x1": 1} would become invalid


def test_falls_back_to_type_only_then_any_json() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "x-weird": 1}
    out, relaxed = loosen_until_it_compiles(schema, refusing("x-weird", "items"))
    assert out == {"type": "array"} and relaxed[-1] == "type-only"
    out, relaxed = loosen_until_it_compiles({"x-weird": 1}, refusing("x-weird"))
    assert out == {} and relaxed[-1] == "any-json"


def test_engine_that_refuses_everything_raises_schema_error() -> None:
    with pytest.raises(SchemaError, match="any-JSON"):
        loosen_until_it_compiles({"type": "integer"}, lambda s: "no")


def test_relaxed_grammar_still_accepts_every_valid_instance() -> None:
    from structgen.schema.grammar_check import grammar_accepts

    schema = {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "^(?=x)x[0-9]+$"},
        "n": {"oneOf": [{"type": "integer"}, {"type": "number", "multipleOf": 0.5}]}},
        "required": ["id"]}
    out, relaxed = loosen_until_it_compiles(schema, llguidance_check)
    assert "pattern" in relaxed
    lark = "start: %json " + json.dumps(out)
    for good in ({"id": "x1"}, {"id": "x22", "n": 1.5}):
        assert Draft202012Validator(schema).is_valid(good)
        assert grammar_accepts(lark, json.dumps(good, separators=(",", ":")))[0]


# upgrade_schema -------------------------------------------------------------------------
DRAFT4 = "http://json-schema.org/draft-04/schema#"


@pytest.mark.parametrize(("schema", "instances"), [
    ({"$schema": DRAFT4, "type": "number", "maximum": 5, "exclusiveMaximum": True},
     [5, 4.9, 6]),
    ({"$schema": DRAFT4, "type": "number", "minimum": 1, "exclusiveMinimum": False}, [1, 0]),
    ({"$schema": DRAFT4, "definitions": {"o": {"type": "object"}},
      "properties": {"a": {"type": "string", "$ref": "#/definitions/o"}}},
     [{"a": {}}, {"a": "x"}]),
    ({"$schema": DRAFT4, "items": [{"type": "integer"}], "additionalItems": False},
     [[1], [1, 2], ["x"]]),
    ({"$schema": DRAFT4, "dependencies": {"a": ["b"], "c": {"required": ["d"]}}},
     [{"a": 1}, {"a": 1, "b": 2}, {"c": 1}, {"c": 1, "d": 2}]),
])
def test_upgrade_keeps_the_meaning_of_draft_04(schema: dict[str, Any],
                                               instances: list[Any]) -> None:
    upgraded = upgrade_schema(schema)
    Draft202012Validator.check_schema(upgraded)
    for inst in instances:
        assert (Draft202012Validator(upgraded).is_valid(inst)
                == Draft4Validator(schema).is_valid(inst)), inst


def test_upgrade_leaves_2020_12_schemas_alone() -> None:
    schema = {"properties": {"a": {"type": "string", "$ref": "#/$defs/x"}},
              "$defs": {"x": {"minLength": 1}}}
    assert upgrade_schema(schema) == schema


# Engines that compile a keyword without enforcing it -------------------------------------
def test_drop_keywords_loosens_a_copy_and_names_what_went() -> None:
    from structgen.schema.relax import drop_keywords

    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "multipleOf": 3, "not": {"const": 9}},
        "tags": {"type": "array", "uniqueItems": True}}}
    loose, dropped = drop_keywords(schema, frozenset({"multipleOf", "not", "oneOf"}))
    assert set(dropped) == {"multipleOf", "not"}  # oneOf is not in the schema
    assert loose["properties"]["n"] == {"type": "integer"}
    assert loose["properties"]["tags"]["uniqueItems"] is True
    assert schema["properties"]["n"]["multipleOf"] == 3  # the input is untouched
    same, none = drop_keywords(schema, frozenset({"if"}))
    assert same is schema and none == ()


def test_discriminated_one_of_becomes_any_of_exactly() -> None:
    from structgen.schema.relax import disjoint_one_of_to_any_of

    tagged = {"$defs": {
        "A": {"type": "object", "properties": {"t": {"const": "a"}}, "required": ["t"]},
        "B": {"type": "object", "properties": {"t": {"const": "b"}, "x": {"type": "integer"}},
              "required": ["t"]}},
        "oneOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}]}
    out = disjoint_one_of_to_any_of(tagged)
    assert "oneOf" not in out and len(out["anyOf"]) == 2 and "oneOf" in tagged
    for instance in ({"t": "a"}, {"t": "b", "x": 1}, {"t": "c"}, {"x": 1}, {"t": "a", "x": 1}):
        assert Draft202012Validator(out).is_valid(instance) == \
            Draft202012Validator(tagged).is_valid(instance)
    # a tag that is not required, or equal tags, proves nothing: left alone
    optional = json.loads(json.dumps(tagged))
    optional["$defs"]["B"]["required"] = []
    assert disjoint_one_of_to_any_of(optional) is optional
    same_tag = json.loads(json.dumps(tagged))
    same_tag["$defs"]["B"]["properties"]["t"]["const"] = "a"
    assert disjoint_one_of_to_any_of(same_tag) is same_tag


def test_xgrammar_prepare_schema_reports_what_it_cannot_enforce() -> None:
    from structgen.constrain.xgrammar import XGrammarConstraint
    from structgen.schema.compiled import CompiledOutput

    bound = XGrammarConstraint.prepare_schema.__get__(object.__new__(XGrammarConstraint))

    def prepare(schema: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        out, entries = bound(CompiledOutput(kind="json", json_schema=schema))
        return out, tuple(str(e) for e in entries)
    # MaskBench Github_trivial---o25183: XGrammar emitted null for this string enum
    schema, dropped = prepare({"type": "string", "enum": ["1", "2-two", None]})
    assert schema == {"type": "string", "enum": ["1", "2-two"]} and dropped == ()
    # several allOf branches: XGrammar lost the object type and wrote '":"'
    schema, dropped = prepare({"type": "object", "maxProperties": 1, "allOf": [
        {"required": ["a"]}, {"not": {"required": ["b"]}}]})
    assert schema == {"type": "object", "maxProperties": 1}
    assert set(dropped) == {"/allOf/1/not", "/allOf"}
    untouched = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert prepare(untouched) == (untouched, ())


# prepare_for_llguidance: what llguidance is known to refuse goes out before its compile ---
@pytest.mark.parametrize("keyword", sorted(
    __import__("structgen.schema.support", fromlist=["x"]).LLGUIDANCE.unenforced))
def test_llguidance_refuses_each_keyword_prepare_takes_out(keyword: str) -> None:
    """The list matches the installed llguidance: each keyword alone fails its compile, and
    the prepared schema compiles. (A new llguidance that implements one fails this test,
    which is the cue to let it through.)"""
    from structgen.constrain.llguidance import prepare_for_llguidance

    examples = {
        "not": {"type": "string", "not": {"const": "a"}},
        "if": {"if": {"type": "string"}, "then": {"minLength": 2}},
        "then": {"if": {"type": "string"}, "then": {"minLength": 2}},
        "else": {"if": {"type": "string"}, "else": {"type": "integer"}},
        "dependencies": {"type": "object", "dependencies": {"a": ["b"]}},
        "dependentSchemas": {"type": "object", "dependentSchemas": {"a": {"required": ["b"]}}},
        "dependentRequired": {"type": "object", "dependentRequired": {"a": ["b"]}},
        "unevaluatedProperties": {"type": "object", "unevaluatedProperties": False},
        "unevaluatedItems": {"type": "array", "unevaluatedItems": False},
        "contains": {"type": "array", "contains": {"type": "string"}},
        "minContains": {"type": "array", "contains": {"type": "string"}, "minContains": 2},
        "maxContains": {"type": "array", "contains": {"type": "string"}, "maxContains": 2},
        "uniqueItems": {"type": "array", "uniqueItems": True},
        "propertyNames": {"type": "object", "propertyNames": {"pattern": "^a"}},
        "$dynamicRef": {"$defs": {"n": {"$dynamicAnchor": "n", "type": "string"}},
                        "$dynamicRef": "#n"},
    }
    schema = examples[keyword]
    assert llguidance_check(schema) is not None
    prepared, entries = prepare_for_llguidance(schema)
    taken_out = {e.keyword for e in entries}
    assert keyword in taken_out or (keyword in ("then", "else") and "if" in taken_out)
    assert llguidance_check(prepared) is None
    assert schema == examples[keyword]  # the input is never changed


def test_prepare_for_llguidance_keeps_what_it_can() -> None:
    from structgen.constrain.llguidance import prepare_for_llguidance

    plain = {"type": "object", "properties": {"not_a_keyword": {"type": "string"},
                                              "at": {"type": "string", "format": "date-time"}}}
    assert prepare_for_llguidance(plain) == (plain, ())
    assert prepare_for_llguidance(plain)[0] is plain  # nothing to do: no copy
    mixed = {"type": "object", "properties": {
        "id": {"type": "string", "format": "int64"},      # llguidance: "Unknown format"
        "at": {"type": "string", "format": "date-time"},  # llguidance asserts this one
        "tags": {"type": "array", "uniqueItems": True, "items": {"type": "string"}}}}
    assert llguidance_check(mixed) is not None
    prepared, taken_out = prepare_for_llguidance(mixed)
    assert {str(e) for e in taken_out} == {"/properties/tags/uniqueItems",
                                           "/properties/id/format"}
    assert prepared["properties"]["at"]["format"] == "date-time"  # only unknown formats go
    assert "format" not in prepared["properties"]["id"]
    assert llguidance_check(prepared) is None


def test_json_schema_grammar_is_the_lark_grammar_language() -> None:
    """The embedded backend compiles a JSON output as a JSON Schema grammar (faster than the
    Lark %json wrapper); both must accept and reject the same texts, whitespace layout
    included."""
    import llguidance

    from structgen.constrain.base import ConstraintOptions
    from structgen.constrain.llguidance import build_grammar, build_lark
    from structgen.schema import compile_output

    tok = byte_tokenizer()
    output = compile_output({"type": "object", "properties": {
        "kind": {"enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
        "required": ["kind", "n"], "additionalProperties": False})
    texts = ['{"kind":"a","n":3}', '{"kind":"b","n":0,"tags":["x","y"]}',
             '{"kind": "a", "n": 3}', '{\n  "kind": "a",\n  "n": 3\n}', '{"kind":"c","n":3}',
             '{"kind":"a","n":-1}', '{"kind":"a","n":3,"tags":["x","y","z"]}', '{"n":3}']
    for options in (ConstraintOptions(), ConstraintOptions(whitespace="any")):
        fast = build_grammar(output, options)
        lark = llguidance.LLMatcher.grammar_from_lark(build_lark(output, options))
        for text in texts:
            verdicts = []
            for grammar in (fast, lark):
                m = llguidance.LLMatcher(tok, grammar, log_level=0)
                ok = m.consume_tokens(tok.tokenize_str(text)) and m.is_accepting()
                verdicts.append(bool(ok))
            assert verdicts[0] == verdicts[1], (options, text)
        assert sum(  # the layout matters: compact accepts 2 texts, "any" 4
            bool(llguidance.LLMatcher(tok, fast, log_level=0).consume_tokens(
                tok.tokenize_str(t))) for t in texts[:4]) == (2 if options.whitespace ==
                                                              "compact" else 4)


def test_prepare_for_llguidance_leaves_formats_on_numbers() -> None:
    """llguidance ignores ``format`` on non-strings (Kubernetes' int32/int64/double), so they
    are neither dropped nor reported."""
    from structgen.constrain.llguidance import prepare_for_llguidance

    schema = {"type": "object", "properties": {
        "replicas": {"type": "integer", "format": "int32"},
        "ratio": {"type": "number", "format": "double"},
        "blob": {"format": "byte"}}}
    assert llguidance_check({"type": "integer", "format": "int32"}) is None
    prepared, taken_out = prepare_for_llguidance(schema)
    assert [str(e) for e in taken_out] == ["/properties/blob/format"]
    assert prepared["properties"]["replicas"] == {"type": "integer", "format": "int32"}
    assert prepared["properties"]["ratio"] == {"type": "number", "format": "double"}
    assert prepared["properties"]["blob"] == {}
    assert llguidance_check(prepared) is None
