"""References inside one document ($id-relative, anchors, pointers through upgraded
keywords) compile, and values are judged by the schema as written, under its own draft."""

from __future__ import annotations

from typing import Any

import pytest

from structgen.errors import SchemaError
from structgen.schema.compiled import compile_output
from structgen.schema.refs import localize_refs
from structgen.validate import validate_data

DRAFT7 = "http://json-schema.org/draft-07/schema#"


def ok(schema: dict[str, Any], data: Any) -> bool:
    return validate_data(data, compile_output(schema)).ok


def test_id_relative_references_become_root_pointers() -> None:
    schema = {"$id": "http://example.com/event.json",
              "properties": {"payload": {"$id": "payload.json",
                                         "definitions": {"id": {"type": "integer"}},
                                         "properties": {"id": {"$ref": "#/definitions/id"}}}},
              "allOf": [{"$ref": "payload.json"}]}
    local = localize_refs(schema)
    assert local["allOf"][0]["$ref"] == "#/properties/payload"
    assert local["properties"]["payload"]["properties"]["id"]["$ref"] == (
        "#/properties/payload/definitions/id")
    assert "$id" not in local["properties"]["payload"] and schema["properties"]["payload"][
        "$id"] == "payload.json"  # the input is never changed
    assert ok(schema, {"id": 3, "payload": {"id": 4}})
    assert not ok(schema, {"id": "x"})  # via allOf -> payload.json
    assert not ok(schema, {"payload": {"id": "x"}})


def test_recursive_references_between_resources_and_anchors() -> None:
    tree = {"$id": "http://localhost:1234/tree", "type": "object",
            "properties": {"nodes": {"type": "array", "items": {"$ref": "node"}}},
            "definitions": {"node": {"$id": "http://localhost:1234/node",
                                     "properties": {"value": {"type": "number"},
                                                    "subtree": {"$ref": "tree"}}}}}
    assert ok(tree, {"nodes": [{"value": 1, "subtree": {"nodes": [{"value": 2}]}}]})
    assert not ok(tree, {"nodes": [{"value": 1, "subtree": {"nodes": [{"value": "x"}]}}]})
    anchored = {"$schema": DRAFT7, "allOf": [{"$ref": "#foo"}],
                "definitions": {"A": {"$id": "#foo", "type": "integer"}}}
    assert ok(anchored, 1) and not ok(anchored, "a")
    urn = {"$ref": "urn:uuid:deadbeef-4321#/$defs/bar",
           "$defs": {"foo": {"$id": "urn:uuid:deadbeef-4321", "$defs": {"bar": {
               "type": "string"}}}}}
    assert ok(urn, "s") and not ok(urn, 1)


def test_pointer_through_an_upgraded_items_list() -> None:
    schema = {"$schema": DRAFT7, "items": [{"type": "integer"}, {"$ref": "#/items/0"}]}
    assert ok(schema, [1, 2]) and not ok(schema, [1, "x"])


def test_values_are_judged_by_the_declared_draft() -> None:
    # draft 7 ignores every sibling of $ref, $id included: foo.json is base_foo (a number)
    schema = {"$schema": DRAFT7, "$id": "http://localhost:1234/sibling_id/base/",
              "definitions": {"foo": {"$id": "http://localhost:1234/sibling_id/foo.json",
                                      "type": "string"},
                              "base_foo": {"$id": "foo.json", "type": "number"}},
              "allOf": [{"$id": "http://localhost:1234/sibling_id/", "$ref": "foo.json"}]}
    assert ok(schema, 1) and not ok(schema, "a")
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 3,
              "exclusiveMaximum": True}
    assert ok(draft4, 2) and not ok(draft4, 3)


def test_references_out_of_the_document_are_still_refused() -> None:
    schema = {"$id": "http://example.com/a.json", "$ref": "other.json"}
    assert localize_refs(schema) is schema
    with pytest.raises(SchemaError, match="only local references"):
        compile_output(schema)
    dynamic = {"$id": "http://x/a", "$dynamicAnchor": "n",
               "properties": {"b": {"$id": "b", "$ref": "a"}}}
    assert localize_refs(dynamic) is dynamic  # dynamic scope follows the resources


def test_fragment_ids_that_name_no_anchor_are_dropped() -> None:
    # seen in the wild (draft 6/7): "$id": "#/definitions/link", "$id": "#account!core"
    schema = {"$schema": DRAFT7, "properties": {
        "link": {"$id": "#/definitions/link", "type": "string"},
        "account": {"$id": "#account!core", "type": "integer"},
        "named": {"$id": "#named", "type": "boolean"}}}
    out = compile_output(schema).json_schema
    assert out is not None
    assert "$id" not in out["properties"]["link"] and "$id" not in out["properties"]["account"]
    assert out["properties"]["named"]["$anchor"] == "named"
    assert ok(schema, {"link": "x", "account": 1}) and not ok(schema, {"account": "1"})
