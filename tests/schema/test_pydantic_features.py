"""Every Pydantic feature the compiler must preserve, as a real round trip:
compile → the keyword is in the JSON Schema → a valid instance passes
→ a broken one fails with the right pointer and keyword (jsonschema's or Pydantic's)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from pydantic import BaseModel, Field, IPvAnyAddress

from structgen.schema import compile_output
from structgen.validate import validate_data, validate_text


class Color(StrEnum):
    red = "red"
    green = "green"


class WithLiteral(BaseModel):
    mode: Literal["fast", "slow"]


class WithEnum(BaseModel):
    color: Color


class WithOptional(BaseModel):
    note: str | None = None
    count: int


class WithUnion(BaseModel):
    value: int | str


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class WithDiscriminated(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]


class WithStrings(BaseModel):
    name: str = Field(min_length=2, max_length=5)
    code: str = Field(pattern=r"^[A-Z]{3}-\d{2}$")


class WithNumbers(BaseModel):
    ratio: float = Field(gt=0, lt=1)
    step: int = Field(multiple_of=5, ge=0, le=100)


class WithLists(BaseModel):
    tags: list[str] = Field(min_length=1, max_length=3)


class Node(BaseModel):
    name: str
    children: list[Node] = Field(default_factory=list, max_length=2)


class Inner(BaseModel):
    x: int


class WithNested(BaseModel):
    inner: Inner
    by_name: dict[str, int] = Field(default_factory=dict)


class WithFormats(BaseModel):
    id: UUID
    at: datetime


@dataclass
class Case:
    model: type[BaseModel]
    keyword_at: tuple[str, Any]  # (JSON pointer into the schema, expected value there)
    good: dict[str, Any]
    bad: dict[str, Any]
    pointer: str  # where the error is in the bad instance
    keyword: str  # the validator keyword that fails


CASES = {
    "literal": Case(WithLiteral, ("/properties/mode/enum", ["fast", "slow"]),
                    {"mode": "fast"}, {"mode": "medium"}, "/mode", "enum"),
    "enum": Case(WithEnum, ("/$defs/Color/enum", ["red", "green"]),
                 {"color": "green"}, {"color": "blue"}, "/color", "enum"),
    "optional-null": Case(WithOptional, ("/properties/note/anyOf/1", {"type": "null"}),
                          {"note": None, "count": 1}, {"note": 3, "count": 1}, "/note", "anyOf"),
    "optional-absent-required": Case(WithOptional, ("/required", ["count"]),
                                     {"count": 1}, {"note": "x"}, "", "required"),
    "union": Case(WithUnion, ("/properties/value/anyOf/0", {"type": "integer"}),
                  {"value": "a"}, {"value": 1.5}, "/value", "anyOf"),
    "discriminated": Case(WithDiscriminated, ("/properties/pet/discriminator/propertyName", "kind"),
                          {"pet": {"kind": "cat", "lives": 3}},
                          {"pet": {"kind": "cat", "good": True}}, "/pet", "oneOf"),
    "discriminated-nested-bound": Case(
        WithDiscriminated, ("/$defs/Cat/properties/lives/maximum", 9),
        {"pet": {"kind": "dog", "good": False}}, {"pet": {"kind": "cat", "lives": 10}},
        "/pet", "oneOf"),
    "min-length": Case(WithStrings, ("/properties/name/minLength", 2),
                       {"name": "ab", "code": "ABC-12"}, {"name": "a", "code": "ABC-12"},
                       "/name", "minLength"),
    "max-length": Case(WithStrings, ("/properties/name/maxLength", 5),
                       {"name": "abcde", "code": "ABC-12"}, {"name": "abcdef", "code": "ABC-12"},
                       "/name", "maxLength"),
    # the pattern reaches the schema in portable ECMA-262 form: \d is [0-9] (issue 15)
    "pattern": Case(WithStrings, ("/properties/code/pattern", r"^[A-Z]{3}-[0-9]{2}$"),
                    {"name": "ab", "code": "XYZ-99"}, {"name": "ab", "code": "xyz-99"},
                    "/code", "pattern"),
    "exclusive-minimum": Case(WithNumbers, ("/properties/ratio/exclusiveMinimum", 0),
                              {"ratio": 0.5, "step": 5}, {"ratio": 0, "step": 5},
                              "/ratio", "exclusiveMinimum"),
    "exclusive-maximum": Case(WithNumbers, ("/properties/ratio/exclusiveMaximum", 1),
                              {"ratio": 0.5, "step": 5}, {"ratio": 1, "step": 5},
                              "/ratio", "exclusiveMaximum"),
    "multiple-of": Case(WithNumbers, ("/properties/step/multipleOf", 5),
                        {"ratio": 0.5, "step": 95}, {"ratio": 0.5, "step": 7},
                        "/step", "multipleOf"),
    "maximum": Case(WithNumbers, ("/properties/step/maximum", 100),
                    {"ratio": 0.5, "step": 100}, {"ratio": 0.5, "step": 105},
                    "/step", "maximum"),
    "integer-type": Case(WithNumbers, ("/properties/step/type", "integer"),
                         {"ratio": 0.5, "step": 10}, {"ratio": 0.5, "step": 10.5},
                         "/step", "type"),
    "list-min": Case(WithLists, ("/properties/tags/minItems", 1),
                     {"tags": ["a"]}, {"tags": []}, "/tags", "minItems"),
    "list-max": Case(WithLists, ("/properties/tags/maxItems", 3),
                     {"tags": ["a", "b", "c"]}, {"tags": ["a", "b", "c", "d"]},
                     "/tags", "maxItems"),
    "list-item-type": Case(WithLists, ("/properties/tags/items/type", "string"),
                           {"tags": ["a"]}, {"tags": ["a", 2]}, "/tags/1", "type"),
    "recursive": Case(Node, ("/$defs/Node/properties/children/items/$ref", "#/$defs/Node"),
                      {"name": "r", "children": [{"name": "a", "children": [{"name": "b"}]}]},
                      {"name": "r", "children": [{"name": "a", "children": [{"name": 1}]}]},
                      "/children/0/children/0/name", "type"),
    "recursive-bounded": Case(Node, ("/$defs/Node/properties/children/maxItems", 2),
                              {"name": "r"},
                              {"name": "r", "children": [{"name": "a"}] * 3},
                              "/children", "maxItems"),
    "nested": Case(WithNested, ("/properties/inner/$ref", "#/$defs/Inner"),
                   {"inner": {"x": 1}}, {"inner": {"x": "1"}}, "/inner/x", "type"),
    "dict-values": Case(WithNested, ("/properties/by_name/additionalProperties/type", "integer"),
                        {"inner": {"x": 1}, "by_name": {"a": 1}},
                        {"inner": {"x": 1}, "by_name": {"a": "b"}}, "/by_name/a", "type"),
    "format-uuid": Case(WithFormats, ("/properties/id/format", "uuid"),
                        {"id": "12345678-1234-5678-1234-567812345678", "at": "2024-01-02T03:04:05Z"},
                        {"id": "not-a-uuid", "at": "2024-01-02T03:04:05Z"}, "/id", "format"),
    "format-date-time": Case(WithFormats, ("/properties/at/format", "date-time"),
                             {"id": "12345678-1234-5678-1234-567812345678",
                              "at": "2024-01-02T03:04:05+02:00"},
                             {"id": "12345678-1234-5678-1234-567812345678", "at": "yesterday"},
                             "/at", "format"),
}


def _at(schema: Any, pointer: str) -> Any:
    node = schema
    for token in pointer.lstrip("/").split("/"):
        node = node[int(token)] if isinstance(node, list) else node[token.replace("~1", "/")]
    return node


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_round_trip(case: Case) -> None:
    compiled = compile_output(case.model)
    pointer, expected = case.keyword_at
    assert _at(compiled.json_schema, pointer) == expected
    good = validate_text(json.dumps(case.good), compiled)
    assert good.ok, good.errors
    assert isinstance(good.value, case.model)
    bad = validate_data(case.bad, compiled)
    assert not bad.ok
    assert (bad.errors[0].pointer, bad.errors[0].keyword) == (case.pointer, case.keyword), \
        bad.errors


def test_raw_json_schema_round_trip_without_a_model() -> None:
    """The same keywords work from a dict (jsonschema alone, value is the parsed data)."""
    schema = compile_output(WithStrings).json_schema
    assert schema is not None
    compiled = compile_output(dict(schema))
    assert compiled.model is None
    assert validate_text('{"name":"abc","code":"ABC-12"}', compiled).value == {
        "name": "abc", "code": "ABC-12"}
    bad = validate_text('{"name":"abc","code":"ABC-1"}', compiled)
    assert [(e.pointer, e.keyword) for e in bad.errors] == [("/code", "pattern")]


class WithPydanticFormat(BaseModel):
    ip: IPvAnyAddress


def test_pydantic_only_formats_are_asserted_by_pydantic() -> None:
    """A dict schema with an unknown format is refused; the same format from a Pydantic
    model is fine, because Pydantic checks it when the output is validated."""
    compiled = compile_output(WithPydanticFormat)
    assert compiled.json_schema is not None
    assert compiled.json_schema["properties"]["ip"]["format"] == "ipvanyaddress"
    assert validate_text('{"ip": "10.0.0.1"}', compiled).ok
    bad = validate_text('{"ip": "10.0.0.300"}', compiled)
    assert (bad.errors[0].pointer, bad.errors[0].keyword) == ("/ip", "ip_any_address")


def test_properties_keep_declaration_order_and_other_keys_are_sorted() -> None:
    schema = compile_output(WithFormats).json_schema
    assert schema is not None
    assert list(schema["properties"]) == ["id", "at"]  # field order = generation order
    assert list(schema) == sorted(schema)
    assert list(schema["properties"]["at"]) == sorted(schema["properties"]["at"])


class Bird(BaseModel):
    kind: Literal["bird"] = "bird"  # a tag with a default: Pydantic leaves it optional
    wings: int = 2


class Fish(BaseModel):
    kind: Literal["fish"] = "fish"


class Aquarium(BaseModel):
    # nested in a list: the union sits under items, not at the top
    tanks: list[Annotated[Bird | Fish, Field(discriminator="kind")]]


def test_discriminator_tag_is_required_in_every_variant() -> None:
    """Pydantic's tagged-union validator needs the tag; the schema must not let it out."""
    schema = compile_output(Aquarium).to_json_schema()
    for name in ("Bird", "Fish"):
        assert "kind" in schema["$defs"][name]["required"], name
    assert not validate_data({"tanks": [{"wings": 2}]}, compile_output(Aquarium)).ok
