"""Bad output specs raise SchemaError with the JSON pointer of the offending part,
never a dependency's raw exception."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from structgen.errors import SchemaError, StructgenError
from structgen.schema import check_schema, compile_output
from structgen.types import Choice, Grammar, JsonSchema, Regex


class Opaque:
    """A type Pydantic can validate (arbitrary_types_allowed) but not describe."""


class NoSchema(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    thing: Opaque


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


# (spec, expected pointer, a word the message must contain)
BAD: dict[str, tuple[Any, str, str]] = {
    "not-a-dict-list": ([1, 2], "", "unsupported output spec"),
    "not-a-dict-int": (42, "", "unsupported output spec"),
    "str-not-json": ("{not json", "", "JSON Schema document"),
    "json-schema-wrapper-not-dict": (JsonSchema(["x"]), "", "must be an object"),  # type: ignore[arg-type]
    "not-serializable": ({"enum": {1, 2}}, "", "JSON-serializable"),
    "unknown-type": ({"type": "strnig"}, "/type", "unknown type 'strnig'"),
    "negative-minLength": (_obj(a={"type": "string", "minLength": -1}),
                           "/properties/a/minLength", "minimum of 0"),
    "required-not-array": ({"type": "object", "required": "a"}, "/required", "array"),
    "property-not-schema": (_obj(a="string"), "/properties/a", "not of type"),
    "def-not-schema": ({"$defs": {"x": 5}}, "/$defs/x", "not of type"),
    "invalid-pattern": (_obj(a={"type": "string", "pattern": "([a-z"}),
                        "/properties/a/pattern", "regex"),
    "invalid-patternProperties-key": ({"patternProperties": {"([": {"type": "string"}}},
                                      "/patternProperties/([", "regex"),
    "unresolvable-ref": (_obj(a={"$ref": "#/$defs/Missing"}), "/properties/a/$ref",
                         "unresolvable $ref"),
    "unresolvable-ref-in-items": ({"type": "array", "items": {"$ref": "#/definitions/x"}},
                                  "/items/$ref", "unresolvable $ref"),
    "remote-ref": ({"$ref": "http://example.com/x.json"}, "/$ref", "only local"),
    "anchor-ref-missing": ({"$ref": "#nowhere"}, "/$ref", "unresolvable"),
    "minimum-above-maximum": (_obj(n={"type": "integer", "minimum": 5, "maximum": 1}),
                              "/properties/n/minimum", "greater than maximum"),
    "exclusive-bounds-empty": (_obj(n={"type": "number", "exclusiveMinimum": 1,
                                       "exclusiveMaximum": 1}),
                               "/properties/n/exclusiveMinimum", "leave no number"),
    "minimum-vs-exclusiveMaximum": ({"type": "number", "minimum": 3, "exclusiveMaximum": 3},
                                    "/minimum", "leave no number"),
    "minLength-above-maxLength": ({"type": "string", "minLength": 4, "maxLength": 2},
                                  "/minLength", "greater than maxLength"),
    "minItems-above-maxItems": (_obj(t={"type": "array", "minItems": 3, "maxItems": 1}),
                                "/properties/t/minItems", "greater than maxItems"),
    "minProperties-above-max": ({"type": "object", "minProperties": 2, "maxProperties": 1},
                                "/minProperties", "greater than"),
    "nan-bound": ({"type": "number", "maximum": float("nan")}, "/maximum", "finite"),
    "allOf-disjoint-types": ({"allOf": [{"type": "string"}, {"type": "integer"}]},
                             "/allOf", "disjoint types"),
    "enum-wrong-type": (_obj(c={"type": "integer", "enum": ["a", "b"]}),
                        "/properties/c/enum", "declared type"),
    "empty-enum": ({"enum": []}, "/enum", "empty enum"),
    "const-wrong-type": ({"type": "string", "const": 3}, "/const", "declared type"),
    "const-not-in-enum": ({"const": "c", "enum": ["a", "b"]}, "/const", "not one of"),
    "required-forbidden": ({"type": "object", "properties": {"a": {"type": "string"}},
                            "required": ["a", "b"], "additionalProperties": False},
                           "/required", "'b'"),
    "unknown-format": (_obj(when={"type": "string", "format": "moon-phase"}),
                       "/properties/when/format", "unknown format 'moon-phase'"),
    "nested-contradiction-in-defs": ({"$defs": {"N": {"type": "integer", "minimum": 2,
                                                      "maximum": 1}},
                                      "$ref": "#/$defs/N"}, "/$defs/N/minimum", "greater"),
    "regex-invalid": (Regex("([a-z"), "", "invalid regular expression"),
    "regex-empty": (Regex(""), "", "non-empty"),
    "choice-empty": (Choice([]), "", "at least one"),
    "choice-duplicates": (Choice(["a", "a"]), "", "duplicate"),
    "grammar-empty": (Grammar("  "), "", "non-empty"),
    "grammar-bad-lark": (Grammar("start: ( \"a\"", syntax="lark"), "", "does not compile"),
    "grammar-undefined-rule": (Grammar("start: missing_rule", syntax="lark"), "",
                               "does not compile"),
    "grammar-bad-ebnf": (Grammar('root ::= "a" (', syntax="ebnf"), "", "cannot parse EBNF"),
    "grammar-ebnf-undefined-rule": (Grammar("root ::= undefined_rule"), "", "not found"),
    "grammar-bad-syntax-name": (Grammar("start: \"a\"", syntax="yacc"),  # type: ignore[arg-type]
                                "", "unknown grammar syntax"),
    "pydantic-no-json-schema": (NoSchema, "", "cannot build a JSON Schema for NoSchema"),
}


@pytest.mark.parametrize(("spec", "pointer", "words"), BAD.values(), ids=BAD.keys())
def test_bad_spec_raises_schema_error_with_pointer(spec: Any, pointer: str, words: str) -> None:
    with pytest.raises(SchemaError) as info:
        compile_output(spec)
    err = info.value
    assert err.pointer == pointer
    assert words in str(err)
    assert str(err) == (f"{err.reason} (at {pointer})" if pointer else err.reason)
    # no dependency's exception chained under ours
    assert err.__cause__ is None
    assert err.__context__ is None or err.__suppress_context__


def test_check_schema_on_non_objects() -> None:
    check_schema(True)  # a boolean schema is valid Draft 2020-12
    with pytest.raises(SchemaError, match="object or boolean, got int"):
        check_schema(3)


def test_unknown_format_can_be_treated_as_annotation() -> None:
    check_schema({"type": "string", "format": "moon-phase"}, unknown_formats="ignore")
    check_schema({"type": "string", "format": "int64"})  # a well-known annotation


@pytest.mark.parametrize(("spec", "method", "words"), [
    (Regex("a+"), "to_json_schema", "no JSON Schema form"),
    (Grammar('start: "a"', syntax="lark"), "to_regex", "no regular-expression form"),
    (Grammar('start: "a"', syntax="lark"), "to_ebnf", "no EBNF form"),
    ({"type": "object", "properties": {"n": {"type": "string", "format": "int64"}}},
     "to_lark", "does not compile"),
])
def test_target_without_a_form_raises_schema_error(spec: Any, method: str, words: str) -> None:
    compiled = compile_output(spec)
    with pytest.raises(SchemaError, match=words) as info:
        getattr(compiled, method)()
    # llguidance names the format, not where it is: structgen finds the pointer
    assert info.value.pointer == ("/properties/n/format" if method == "to_lark" else "")


def test_schema_error_is_a_structgen_error() -> None:
    with pytest.raises(StructgenError):
        compile_output({"type": "nope"})
